/**
 * Limits on overlays made on demand (--overlay-dir, --ephemeral): at most `maxOverlays`
 * files, and never start one when the directory's filesystem has less than `minFreeBytes`
 * available (docs/security.md "Limits"). A client naming 5000 exports therefore gets at
 * most maxOverlays files, and running overlays keep the reserve to grow into.
 *
 *   tryReserve(name) ─► true: go ahead (release() if the create fails, or when the file goes)
 *                    └► false: refused (logged, rate-limited); the provider answers as for
 *                       a missing export (NBD_REP_ERR_UNKNOWN)
 *
 * The check and the reservation are one synchronous step, so concurrent GOs cannot race
 * past the count. The count starts from the files already there (`initial`).
 */
import { statfs } from 'node:fs/promises';
import type { Logger } from '../logging.js';
import { RateLimitedWarning } from './limits.js';

export interface OverlayLimits {
  readonly maxOverlays: number;
  readonly minFreeBytes: number;
}

export const OVERLAY_LIMIT_DEFAULTS: OverlayLimits = { maxOverlays: 10_000, minFreeBytes: 2 ** 30 };

export class OverlayQuota {
  private count: number;
  private readonly refused: RateLimitedWarning;

  constructor(
    private readonly limits: OverlayLimits,
    private readonly dir: string,
    initial: number,
    log: Logger,
  ) {
    this.count = initial;
    this.refused = new RateLimitedWarning(log, 'overlay not created: limit reached', 10_000);
  }

  /** Overlays counted now (existing plus being created). */
  get size(): number {
    return this.count;
  }

  /** Count one more overlay if the limits allow it; false (and a warning) if not. */
  async tryReserve(name: string, fields: Record<string, unknown> = {}): Promise<boolean> {
    const refuse = (reason: string): false => {
      this.refused.warn({ ...fields, export: name.slice(0, 200), reason });
      return false;
    };
    if (this.count >= this.limits.maxOverlays) return refuse(`--max-overlays ${this.limits.maxOverlays} reached`);
    this.count++; // held while free space is checked, so concurrent creates cannot overshoot
    const free = await this.freeBytes();
    if (free !== undefined && free < this.limits.minFreeBytes) {
      this.count--;
      return refuse(`only ${free} bytes free in ${this.dir} (--min-free ${this.limits.minFreeBytes})`);
    }
    return true;
  }

  /** A reserved overlay was not created after all, or an overlay file was removed. */
  release(): void {
    if (this.count > 0) this.count--;
  }

  private async freeBytes(): Promise<number | undefined> {
    try {
      const s = await statfs(this.dir);
      return s.bavail * s.bsize;
    } catch {
      return undefined; // cannot tell: the create itself will report a real failure
    }
  }
}
