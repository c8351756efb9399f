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
 * - Users: every client of a name counts from the moment it passes the hold check in
 *   open() until its release() has finished (the device is flushed and closed when it
 *   was the last). So a reset or delete under a hold sees clients that are still opening
 *   the export, not only those in transmission, and whenUnused() tells it when the files
 *   are no longer open. An open that finishes while a hold is on gives its handle back
 *   and is refused: nothing opened before a reset or delete is used after it.
 * - Pins: a live snapshot keeps the shared device in use (pin()) exactly like a client
 *   would, so the last client leaving mid-snapshot cannot close the device under it; the
 *   pin's end closes it instead (after the swap, so the frozen layer gets no writes).
 *   The inner handles of a shared device are released together, after the last user.
 * - Borrows: every handle is wrapped so the control plane can read a client's device
 *   without it being closed under the read (device-borrows.ts).
 */
import type { BlockDevice } from '../block/block-device.js';
import { releaseOnce, type ExportContext, type ExportHandle, type ExportInfo, type ExportProvider, type ExportSummary } from '../server/exports.js';
import { recordOf } from '../formats/registry.js';
import { DeviceBorrows } from './device-borrows.js';
import { SwappableDevice } from './swappable-device.js';

interface Shared {
  readonly swappable: SwappableDevice;
  readonly original: BlockDevice;
  /** Clients and pins using the device. */
  refs: number;
  /** Inner handles of the users so far, released when refs reaches 0. */
  readonly handles: ExportHandle[];
}

/** A client of a name, from the hold check in open() until its release has finished. */
interface User {
  readonly connId: number;
}

export class GuardedProvider implements ExportProvider {
  private readonly held = new Map<string, number>();
  private readonly shared = new Map<BlockDevice, Shared>();
  private readonly byName = new Map<string, Shared>();
  private readonly settling = new Map<string, Promise<void>>();
  private readonly users = new Map<string, Set<User>>();
  private readonly unusedWaiters = new Map<string, Array<() => void>>();
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

  /** Connection ids of the clients opening `name` or having it open (releases not finished included). */
  usersOf(name: string): number[] {
    return [...(this.users.get(name) ?? [])].map((u) => u.connId);
  }

  /** Resolves once no client opens or has `name` open (under a hold: stays so). */
  whenUnused(name: string): Promise<void> {
    if (!this.users.get(name)?.size) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.unusedWaiters.get(name) ?? [];
      list.push(resolve);
      this.unusedWaiters.set(name, list);
    });
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

  /**
   * Keep the shared device of `name` open while `fn` runs, as one more user (live
   * snapshots). Undefined, without running fn, when nobody has it open.
   */
  async withPinned<T>(name: string, fn: (device: SwappableDevice) => Promise<T>): Promise<{ result: T } | undefined> {
    const entry = this.byName.get(name);
    if (!entry) return undefined;
    entry.refs++;
    try {
      return { result: await fn(entry.swappable) };
    } finally {
      await this.releaseShared(name, entry);
    }
  }

  /** Passed through so the handshake's "refused export name" line keeps the real reason. */
  refusalReason(name: string): string | undefined {
    return this.held.has(name) ? 'held by the control plane' : this.inner.refusalReason?.(name);
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    if (this.held.has(name)) return undefined;
    // Counted from here: a reset or delete that starts while we open sees us.
    const user: User = { connId: ctx.connId };
    this.enter(name, user);
    let handle: ExportHandle | undefined;
    try {
      // A failed close was logged by whoever released; this client opens the files afresh.
      await this.settling.get(name)?.catch(() => {});
      handle = await this.inner.open(name, ctx);
    } catch (err) {
      this.leave(name, user);
      throw err;
    }
    if (!handle) {
      this.leave(name, user);
      return undefined;
    }
    if (this.held.has(name)) {
      // A forced reset or delete began while we opened and waits for us: give it back.
      await handle.release().finally(() => this.leave(name, user));
      return undefined;
    }
    if (!wrappable(handle)) return this.borrows.track(this.counted(name, user, handle));
    const original = handle.device;
    let s = this.shared.get(original);
    if (!s) {
      s = { swappable: new SwappableDevice(original, { ownsInitial: false }), original, refs: 0, handles: [] };
      this.shared.set(original, s);
      this.byName.set(name, s);
    }
    s.refs++;
    s.handles.push(handle);
    const entry = s;
    return this.borrows.track(
      releaseOnce({ ...handle, device: entry.swappable }, async () => {
        try {
          await this.releaseShared(name, entry);
        } finally {
          this.leave(name, user);
        }
      }),
    );
  }

  async close(): Promise<void> {
    // Swapped devices first: the inner provider only closes the originals.
    await Promise.all(
      [...this.shared.values()].map(async (s) => {
        if (s.swappable.current === s.original) return;
        await s.swappable.flush().catch(() => {});
        await s.swappable.close().catch(() => {});
      }),
    );
    await Promise.all(this.settling.values());
    return this.inner.close();
  }

  /** One user of a shared device is done; the last one closes what the snapshots stacked, then the inner handles. */
  private async releaseShared(name: string, entry: Shared): Promise<void> {
    if (--entry.refs > 0) return;
    this.shared.delete(entry.original);
    if (this.byName.get(name) === entry) this.byName.delete(name);
    const handles = entry.handles.splice(0);
    const settle = (async () => {
      try {
        if (entry.swappable.current !== entry.original) {
          await entry.swappable.flush();
          await entry.swappable.close(); // the layers stacked by snapshots, not the original
        }
      } finally {
        for (const h of handles) await h.release();
      }
    })();
    this.settling.set(name, settle);
    try {
      await settle;
    } finally {
      if (this.settling.get(name) === settle) this.settling.delete(name);
    }
  }

  /** A handle that is not shared: the user leaves once its release has finished. */
  private counted(name: string, user: User, handle: ExportHandle): ExportHandle {
    return releaseOnce(handle, async () => {
      try {
        await handle.release();
      } finally {
        this.leave(name, user);
      }
    });
  }

  private enter(name: string, user: User): void {
    let set = this.users.get(name);
    if (!set) this.users.set(name, (set = new Set()));
    set.add(user);
  }

  private leave(name: string, user: User): void {
    const set = this.users.get(name);
    if (!set?.delete(user) || set.size > 0) return;
    this.users.delete(name);
    const waiters = this.unusedWaiters.get(name) ?? [];
    this.unusedWaiters.delete(name);
    for (const w of waiters) w();
  }
}

/** Shared writable devices of a format with live snapshots (cow) can be snapshotted; per-connection (ephemeral) ones cannot. */
function wrappable(handle: ExportHandle): boolean {
  const d = handle.device;
  return !(d instanceof SwappableDevice) && d.capabilities.writable && d.capabilities.multiConn && Boolean(recordOf(d)?.liveSnapshots);
}
