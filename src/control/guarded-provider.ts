/**
 * GuardedProvider: the provider the server talks to, wrapping the real ones.
 *
 * - Holds: the control plane keeps new clients away from an export while it resets or
 *   deletes it: a held name is invisible to LIST, INFO and GO for that moment. Holding is
 *   reference-counted and always released (hold() takes a function).
 * - Swappable devices: a shared writable cow device handed out by an inner provider
 *   (per-machine overlays) reaches the connections wrapped in ONE SwappableDevice per
 *   device, so a live snapshot can switch all of them at once. When the last connection
 *   ends, a device that was swapped has its new top flushed and closed here (the inner
 *   provider only knows the original); new clients of that name wait for this to finish
 *   and then get the chain reopened from the files.
 * - Borrows: every handle is wrapped so the control plane can read a client's device
 *   without it being closed under the read (device-borrows.ts).
 */
import type { BlockDevice } from '../block/block-device.js';
import type { ExportContext, ExportHandle, ExportInfo, ExportProvider, ExportSummary } from '../server/exports.js';
import { recordOf } from '../formats/registry.js';
import { DeviceBorrows } from './device-borrows.js';
import { SwappableDevice } from './swappable-device.js';

interface Shared {
  readonly swappable: SwappableDevice;
  refs: number;
}

export class GuardedProvider implements ExportProvider {
  private readonly held = new Map<string, number>();
  private readonly shared = new Map<BlockDevice, Shared>();
  private readonly byName = new Map<string, Shared>();
  private readonly settling = new Map<string, Promise<void>>();
  /** Devices of open handles, for reads by the control plane. */
  readonly borrows = new DeviceBorrows();

  constructor(readonly inner: ExportProvider) {}

  /** Run `fn` while new connections to `name` are refused. */
  async hold<T>(name: string, fn: () => Promise<T>): Promise<T> {
    this.held.set(name, (this.held.get(name) ?? 0) + 1);
    try {
      return await fn();
    } finally {
      const n = this.held.get(name)! - 1;
      if (n > 0) this.held.set(name, n);
      else this.held.delete(name);
    }
  }

  isHeld(name: string): boolean {
    return this.held.has(name);
  }

  async list(): Promise<ExportSummary[]> {
    return (await this.inner.list()).filter((e) => !this.held.has(e.name));
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    return this.held.has(name) ? undefined : this.inner.describe(name);
  }

  /** The swappable device of a per-machine overlay in use, if any. */
  swappableFor(name: string): SwappableDevice | undefined {
    return this.byName.get(name)?.swappable;
  }

  /** Passed through so the handshake's "refused export name" line keeps the real reason. */
  refusalReason(name: string): string | undefined {
    return this.held.has(name) ? 'held by the control plane' : this.inner.refusalReason?.(name);
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    if (this.held.has(name)) return undefined;
    await this.settling.get(name);
    const handle = await this.inner.open(name, ctx);
    if (!handle) return handle;
    if (!wrappable(handle)) return this.borrows.track(handle);
    const original = handle.device;
    let s = this.shared.get(original);
    if (!s) {
      s = { swappable: new SwappableDevice(original, { ownsInitial: false }), refs: 0 };
      this.shared.set(original, s);
      this.byName.set(name, s);
    }
    s.refs++;
    const entry = s;
    let released = false;
    return this.borrows.track({
      ...handle,
      device: entry.swappable,
      release: async () => {
        if (released) return;
        released = true;
        if (--entry.refs > 0 || entry.swappable.current === original) {
          if (entry.refs === 0) this.forget(name, original, entry);
          return handle.release();
        }
        this.forget(name, original, entry);
        const settle = (async () => {
          await entry.swappable.flush();
          await entry.swappable.close(); // the layers stacked by snapshots, not the original
          await handle.release();
        })();
        this.settling.set(name, settle);
        try {
          await settle;
        } finally {
          if (this.settling.get(name) === settle) this.settling.delete(name);
        }
      },
    });
  }

  async close(): Promise<void> {
    // Swapped devices first: the inner provider only closes the originals.
    await Promise.all(
      [...this.shared.entries()].map(async ([original, s]) => {
        if (s.swappable.current === original) return;
        await s.swappable.flush().catch(() => {});
        await s.swappable.close().catch(() => {});
      }),
    );
    await Promise.all(this.settling.values());
    return this.inner.close();
  }

  private forget(name: string, original: BlockDevice, entry: Shared): void {
    this.shared.delete(original);
    if (this.byName.get(name) === entry) this.byName.delete(name);
  }
}

/** Shared writable devices of a format with live snapshots (cow) can be snapshotted; per-connection (ephemeral) ones cannot. */
function wrappable(handle: ExportHandle): boolean {
  const d = handle.device;
  return !(d instanceof SwappableDevice) && d.capabilities.writable && d.capabilities.multiConn && Boolean(recordOf(d)?.liveSnapshots);
}
