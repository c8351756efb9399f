/**
 * Allocation figures of the exports (bytes each layer provides, the status page's map),
 * for GET /exports, GET /exports/NAME/allocation and /metrics. Never computed per request
 * (docs/security.md "Admin API"):
 *
 *   FigureCache        each export measured at most every ALLOCATION_TTL_MS, one walk at
 *                      a time, in the background once it has a value (figure-cache.ts)
 *   closed overlays    a per-machine overlay no client has open is walked again only when
 *                      its file changed (inode, size, mtime: a stat instead of a walk)
 *   open devices       a static export's device, or a client's through a borrow that keeps
 *                      it open until the walk ends (device-borrows.ts); a walk of a device
 *                      that starts closing stops (AllocationAborted) and the next way is
 *                      tried: another client's, then the overlay file opened read-only
 *
 * Operations invalidates an export's figures after reset, delete and snapshot; a reload
 * that reopened a static export is noticed here (its device changed).
 */
import { stat } from 'node:fs/promises';
import type { BlockDevice, LayerInfo } from '../block/block-device.js';
import type { NbdServer } from '../server/listener.js';
import { AllocationAborted, measureAllocation, type Allocation } from './allocation.js';
import type { ReloadableExports } from './export-set.js';
import { FigureCache } from './figure-cache.js';
import type { GuardedProvider } from './guarded-provider.js';
import { ApiError } from './api-error.js';
import type { ExportKind, LayerView, OverlayDirInfo } from './operations.js';

/** How old an allocation figure may get before a request queues a background refresh. */
export const ALLOCATION_TTL_MS = 3000;

/** How long a /metrics scrape waits for exports measured for the first time. */
const FIRST_FIGURE_WAIT_MS = 1000;

/** One measurement of an export: its layers with bytes each provides, and the raw figures. */
export interface Figure {
  readonly layers: LayerView[];
  readonly allocation: Allocation;
  /** For an overlay file no client had open: its inode, size and mtime when measured. */
  readonly version?: string;
}

export interface ExportFiguresOptions {
  readonly server: NbdServer;
  readonly guard: GuardedProvider;
  readonly exports: ReloadableExports;
  readonly overlays?: OverlayDirInfo;
  readonly inspect: (file: string) => Promise<BlockDevice>;
  readonly kindOf: (name: string) => ExportKind | undefined;
}

/** Cache key of an export's figure with `buckets` map slices (0: layers only). */
function figureKey(name: string, buckets: number): string {
  return `${name}\0${buckets}`;
}

export class ExportFigures {
  private readonly cache = new FigureCache<Figure>(ALLOCATION_TTL_MS);
  /** The static export device the cached figures of each name were taken from. */
  private readonly measuredDevice = new Map<string, BlockDevice>();
  /** Allocation walks made so far (GET /metrics: proof that they are not per request). */
  walks = 0;

  constructor(private readonly o: ExportFiguresOptions) {}

  /** The export's figure with `buckets` map slices (0: layers only). */
  get(name: string, buckets: number): Promise<Figure> {
    // A reload that reopened a static export made its figures those of another device.
    const device = this.o.exports.device(name);
    if (device !== this.measuredDevice.get(name)) {
      this.invalidate(name);
      if (device) this.measuredDevice.set(name, device);
      else this.measuredDevice.delete(name);
    }
    return this.cache.get(figureKey(name, buckets), async (previous) => {
      // Nobody has the overlay open: unchanged file, unchanged figures (a stat, not a walk).
      const version = await this.closedOverlayVersion(name);
      if (version !== undefined && previous?.version === version) return previous;
      return this.withDevice(name, async (device, alive) => {
        this.walks++;
        const allocation = await measureAllocation(device, buckets, alive);
        return { layers: layersOf(device.describe(), allocation), allocation, version };
      });
    });
  }

  /** Forget the export's figures (its files changed). */
  invalidate(name: string): void {
    this.cache.invalidate(`${name}\0`);
  }

  /**
   * Bytes per layer of every export whose device is open now (metrics: opens no file).
   * An export not measured yet, or that cannot be, is left out.
   */
  async openAllocations(): Promise<Array<{ export: string; depth: number; format: string; bytes: number }>> {
    const rows: Array<{ export: string; depth: number; format: string; bytes: number }> = [];
    const names = new Set<string>(this.o.exports.names());
    for (const c of this.o.server.listConnections()) if (c.exportName !== undefined && this.o.kindOf(c.exportName) === 'overlay') names.add(c.exportName);
    // A scrape waits for first measurements at most FIRST_FIGURE_WAIT_MS (under connection
    // churn there is always a new one queued); what is not ready shows at the next scrape.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([...names].map((name) => this.get(name, 0).catch(() => undefined))),
      new Promise((resolve) => (timer = setTimeout(resolve, FIRST_FIGURE_WAIT_MS))),
    ]);
    clearTimeout(timer);
    for (const name of names) {
      const figure = this.cache.value(figureKey(name, 0));
      for (const l of figure?.layers ?? []) rows.push({ export: name, depth: l.depth, format: l.format, bytes: l.allocatedBytes });
    }
    return rows;
  }

  /** "ino:size:mtime" of a per-machine overlay no client has open; undefined otherwise. */
  private async closedOverlayVersion(name: string): Promise<string | undefined> {
    if (this.o.kindOf(name) !== 'overlay' || this.clientsOf(name).length > 0 || !this.o.overlays) return undefined;
    const st = await stat(this.o.overlays.overlayPath(name), { bigint: true }).catch(() => undefined);
    return st && `${st.ino}:${st.size}:${st.mtimeNs}`;
  }

  private clientsOf(name: string) {
    return this.o.server.listConnections().filter((c) => c.exportName === name);
  }

  /**
   * Run `fn` on the export's open device (a client's kept open while `fn` runs), or on the
   * overlay file opened read-only. `alive()` turns false when a client's device starts
   * closing; `fn` then throws AllocationAborted and the next way is tried.
   */
  private async withDevice<T>(name: string, fn: (device: BlockDevice, alive: () => boolean) => Promise<T>): Promise<T> {
    const open = this.o.exports.device(name);
    if (open) return fn(open, () => this.o.exports.device(name) === open);
    for (const c of this.clientsOf(name)) {
      if (!c.device) continue;
      try {
        const r = await this.o.guard.borrows.borrow(c.device, fn);
        if (r) return r.value;
      } catch (err) {
        if (!(err instanceof AllocationAborted)) throw err;
      }
    }
    if (!this.o.overlays) throw new ApiError(404, `no export "${name}"`);
    const file = this.o.overlays.overlayPath(name);
    let device: BlockDevice;
    try {
      device = await this.o.inspect(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ApiError(404, `no overlay for "${name}" yet (created at its first connection)`);
      throw err;
    }
    try {
      return await fn(device, () => true);
    } finally {
      await device.close();
    }
  }
}

function layersOf(top: LayerInfo, alloc: Allocation): LayerView[] {
  const out: LayerView[] = [];
  let layer: LayerInfo | undefined = top;
  for (let depth = 1; layer; depth++, layer = layer.backing) {
    out.push({ depth, format: layer.format, path: layer.path, allocatedBytes: alloc.bytesByDepth[depth] ?? 0 });
  }
  return out;
}
