/**
 * SwappableDevice: a BlockDevice that forwards to a current device which can be replaced
 * under running connections (live snapshots).
 *
 *   swap(fn): gate closes (new calls wait) ─► calls already running finish ─► fn(old)
 *             returns the new device ─► gate opens, waiting calls run on the new one
 *
 * So every request either ran entirely on the old device (and is complete before fn
 * starts: fn flushes it, so FLUSH semantics hold across the switch) or entirely on the new
 * one. A failing fn leaves the old device in place. The pause a client sees is the drain
 * plus fn; swap() reports it.
 *
 * fn may also return `settled`: work that must finish before a FLUSH on the new device
 * may complete (e.g. fsyncing the frozen layer after the switch, outside the pause).
 * The old device is kept (it is usually the new device's backing) and closed by close()
 * after the current one (the first device only when `ownsInitial`).
 *
 * size, capabilities and block size are the old device's: a replacement must match them
 * (a new cow layer over the old top has the same virtual size and features).
 */
import type { BlockDevice, DeviceCapabilities, Extent, IoOptions, LayerInfo, ZeroOptions } from '../block/block-device.js';
import { recordOf } from '../formats/registry.js';

export type SwapFn = (old: BlockDevice) => Promise<{ device: BlockDevice; settled?: Promise<void> }>;

export class SwappableDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  readonly preferredBlockSize: number;
  /** Bumped by every completed swap (BlockDevice.chainGeneration): the chain grew a layer. */
  private generation = 0;
  private active = 0;
  private gate: Promise<void> | undefined;
  private drained: (() => void) | undefined;
  private swapping: Promise<unknown> = Promise.resolve();
  /** FLUSH waits for this (the previous switch's durability work). */
  private barrier: Promise<void> = Promise.resolve();
  /** Old devices to close after the current one, newest first. */
  private readonly retired: BlockDevice[] = [];

  private readonly initial: BlockDevice;
  private readonly ownsInitial: boolean;

  /**
   * `ownsInitial`: close() also closes the first device (after swaps); false when a
   * provider owns it and closes it itself.
   */
  constructor(
    private device: BlockDevice,
    options: { ownsInitial?: boolean } = {},
  ) {
    this.initial = device;
    this.ownsInitial = options.ownsInitial ?? true;
    this.size = device.size;
    this.capabilities = device.capabilities;
    this.preferredBlockSize = device.preferredBlockSize;
  }

  get current(): BlockDevice {
    return this.device;
  }

  get chainGeneration(): number {
    return this.generation;
  }

  /** Replace the device (see the design note); resolves with the pause in ms. */
  swap(fn: SwapFn): Promise<{ pauseMs: number; settled: Promise<void> }> {
    const run = this.swapping.then(() => this.doSwap(fn));
    this.swapping = run.then(
      (r) => r.settled.catch(() => {}),
      () => {},
    );
    return run;
  }

  private async doSwap(fn: SwapFn): Promise<{ pauseMs: number; settled: Promise<void> }> {
    const started = performance.now();
    let open!: () => void;
    this.gate = new Promise((resolve) => (open = resolve));
    let settled: Promise<void>;
    try {
      if (this.active > 0) await new Promise<void>((resolve) => (this.drained = resolve));
      const old = this.device;
      const next = await fn(old);
      if (next.device.size !== this.size) throw new Error(`replacement device has size ${next.device.size}, not ${this.size}`);
      this.device = next.device;
      // Before the gate opens: a request that runs on the new device sees the new generation.
      this.generation++;
      if (old !== this.initial || this.ownsInitial) this.retired.unshift(old);
      settled = next.settled ?? Promise.resolve();
      const previous = this.barrier;
      this.barrier = Promise.all([previous, settled]).then(() => {});
      // A failure reaches the next FLUSH (and the snapshot's caller through `settled`);
      // with no FLUSH coming it must not become an unhandled rejection that ends the process.
      this.barrier.catch(() => {});
    } finally {
      this.gate = undefined;
      open();
    }
    return { pauseMs: performance.now() - started, settled };
  }

  /** Per request: one counter and one extra promise (no async frame) unless a swap holds the gate. */
  private run<T>(op: (d: BlockDevice) => Promise<T>): Promise<T> {
    if (this.gate) return this.gate.then(() => this.run(op));
    this.active++;
    let p: Promise<T>;
    try {
      p = op(this.device);
    } catch (err) {
      this.leave();
      return Promise.reject(err as Error);
    }
    p.then(this.leave, this.leave);
    return p;
  }

  private readonly leave = (): void => {
    if (--this.active === 0 && this.drained) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  };

  read(offset: number, target: Buffer): Promise<void> {
    return this.run((d) => d.read(offset, target));
  }

  write(offset: number, data: Buffer, options?: IoOptions): Promise<void> {
    return this.run((d) => d.write(offset, data, options));
  }

  flush(): Promise<void> {
    return this.run(async (d) => {
      await this.barrier;
      await d.flush();
    });
  }

  trim(offset: number, length: number, options?: IoOptions): Promise<void> {
    return this.run((d) => d.trim(offset, length, options));
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.run((d) => d.writeZeroes(offset, length, options));
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.run((d) => d.blockStatus(offset, length));
  }

  cache(offset: number, length: number): Promise<void> {
    return this.run((d) => d.cache(offset, length));
  }

  /** Close the current device, then the retired ones it was stacked on. */
  async close(): Promise<void> {
    await this.swapping;
    await this.device.close();
    for (const d of this.retired.splice(0)) await d.close();
  }

  describe(): LayerInfo {
    return this.device.describe();
  }
}

/** Wrap a writable device whose format takes live snapshots (cow) so it can be snapshotted live; anything else as it is. */
export function snapshottable(device: BlockDevice): BlockDevice {
  return device.capabilities.writable && recordOf(device)?.liveSnapshots ? new SwappableDevice(device) : device;
}
