/**
 * The device a fleet machine is served through (docs/fleet.md): the local overlay, plus
 *
 *   - the serving guard: every request first asks whether this server may still serve the
 *     machine (lease valid, head not fenced); if not it fails with EIO naming why — a server
 *     that lost a machine serves neither writes nor reads it cannot prove current;
 *   - dirty marks for the shipper after each completed write, trim and zero (shipper.ts says
 *     why after);
 *   - the ship policy: `on-flush` answers FLUSH (and a FUA write) only after a ship covering
 *     it advanced the head, and a failed ship fails the FLUSH (EIO) rather than lie;
 *     `interval` ships every `intervalMs` when something is dirty, FLUSH stays local;
 *   - close() ships what is left (clean disconnect, shutdown) before closing the overlay.
 */
import { DeviceError, type BlockDevice, type Extent, type IoOptions, type LayerInfo, type ZeroOptions } from '../block/block-device.js';
import type { Logger } from '../logging.js';
import type { Shipper } from './shipper.js';

export type ShipPolicy = { readonly kind: 'on-flush' } | { readonly kind: 'interval'; readonly ms: number };

/** `on-flush` or `interval=10s` / `interval=500ms` (the --ship option); the error names the value. */
export function parseShipPolicy(text: string): ShipPolicy {
  if (text === 'on-flush') return { kind: 'on-flush' };
  const m = /^interval=(\d+)(ms|s|m)$/.exec(text);
  if (m) {
    const ms = Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[m[2] as 'ms' | 's' | 'm'];
    if (ms >= 100 && ms <= 3_600_000) return { kind: 'interval', ms };
  }
  throw new Error(`--ship "${text}": expected on-flush or interval=DURATION (100ms to 60m, e.g. interval=10s)`);
}

export interface MachineDeviceOptions {
  readonly machine: string;
  readonly inner: BlockDevice;
  readonly shipper: Shipper;
  readonly policy: ShipPolicy;
  /** Why this server may not serve the machine now, or undefined when it may. */
  readonly servingProblem: () => string | undefined;
  readonly log?: Logger;
}

export class MachineDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: BlockDevice['capabilities'];
  readonly preferredBlockSize: number;
  private readonly timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Set by retire(): the machine was handed over on purpose (ctl release). */
  private retired: string | undefined;

  constructor(private readonly o: MachineDeviceOptions) {
    this.size = o.inner.size;
    this.preferredBlockSize = o.inner.preferredBlockSize;
    // FUA is ours (a write, then a ship), whatever the overlay does natively.
    this.capabilities = { ...o.inner.capabilities, fua: true };
    if (o.policy.kind === 'interval') {
      this.timer = setInterval(() => {
        if (o.shipper.lag().bytes === 0 || o.servingProblem() !== undefined) return;
        o.shipper.ship().catch((err: Error) => o.log?.warn({ machine: o.machine, err: err.message }, 'machine ship failed; retrying at the next interval'));
      }, o.policy.ms);
      this.timer.unref();
    }
  }

  /**
   * Hand the machine over (ctl release): ship what is left, then refuse every request —
   * connected clients get EIO and reconnect to whichever server takes the machine next.
   * The caller releases the lease after this resolves.
   */
  async retire(reason: string): Promise<void> {
    this.guard();
    await this.o.inner.flush();
    await this.o.shipper.ship();
    this.retired = reason;
  }

  private guard(): void {
    const why = this.retired ?? this.o.servingProblem();
    if (why !== undefined) throw new DeviceError('EIO', `machine ${this.o.machine}: not served here any more (${why})`);
  }

  async read(offset: number, target: Buffer): Promise<void> {
    this.guard();
    await this.o.inner.read(offset, target);
  }

  async write(offset: number, data: Buffer, options?: IoOptions): Promise<void> {
    this.guard();
    await this.mutate(offset, data.length, () => this.o.inner.write(offset, data, options?.fua ? { fua: true } : undefined));
    if (options?.fua) await this.durable();
  }

  async trim(offset: number, length: number, options?: IoOptions): Promise<void> {
    this.guard();
    await this.mutate(offset, length, () => this.o.inner.trim(offset, length));
    if (options?.fua) await this.durable();
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    this.guard();
    await this.mutate(offset, length, () => this.o.inner.writeZeroes(offset, length, { ...options, fua: false }));
    if (options?.fua) await this.durable();
  }

  async flush(): Promise<void> {
    this.guard();
    await this.durable();
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.guard();
    return this.o.inner.blockStatus(offset, length);
  }

  cache(offset: number, length: number): Promise<void> {
    this.guard();
    return this.o.inner.cache(offset, length);
  }

  /** Ship what is left (if still ours), then close the overlay; a failed ship is logged and thrown after closing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    let failure: Error | undefined;
    if (this.retired === undefined && this.o.servingProblem() === undefined && this.o.shipper.lag().bytes > 0) {
      try {
        await this.o.inner.flush();
        await this.o.shipper.ship();
      } catch (err) {
        failure = err instanceof Error ? err : new Error(String(err));
        this.o.log?.error({ machine: this.o.machine, err: (err as Error).message }, 'machine could not be shipped at close: its last writes are only on this server');
      }
    }
    await this.o.inner.close();
    if (failure) throw failure;
  }

  describe(): LayerInfo {
    return { format: 'fleet-machine', detail: { machine: this.o.machine, policy: this.o.policy.kind }, backing: this.o.inner.describe() };
  }

  /** Mark after the operation, success or not (a failed write may have changed bytes). */
  private async mutate(offset: number, length: number, op: () => Promise<void>): Promise<void> {
    try {
      await op();
    } finally {
      this.o.shipper.markDirty(offset, length);
    }
  }

  /** Local durability, then (on-flush) the store's: the FLUSH/FUA contract of the policy. */
  private async durable(): Promise<void> {
    await this.o.inner.flush();
    if (this.o.policy.kind !== 'on-flush') return;
    try {
      await this.o.shipper.ship();
    } catch (err) {
      throw new DeviceError('EIO', `machine ${this.o.machine}: FLUSH not acknowledged, shipping to the object store failed: ${(err as Error).message}`);
    }
  }
}
