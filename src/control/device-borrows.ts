/**
 * Keeping a client's device open while the control plane reads it (allocation walks for
 * GET /exports, the status page's maps, /metrics).
 *
 * A device is closed when the last connection using it releases its export handle. A
 * walk running at that moment would go on with closed descriptors: EBADF at best, and at
 * worst the numbers already reused by another open file. So every handle the server gets
 * (GuardedProvider.open) is wrapped here: its release waits until nobody borrows the
 * device, and once a device's last handle is releasing it can no longer be borrowed.
 * `alive()` tells a long walk to stop early instead of holding the release back.
 */
import type { BlockDevice } from '../block/block-device.js';
import { releaseOnce, type ExportHandle } from '../server/exports.js';

interface Use {
  /** Handles not yet released. */
  handles: number;
  borrowers: number;
  readonly idle: Array<() => void>;
}

export class DeviceBorrows {
  private readonly live = new Map<BlockDevice, Use>();

  /** The same handle, whose release first waits for the device's borrowers. */
  track(handle: ExportHandle): ExportHandle {
    const device = handle.device;
    let use = this.live.get(device);
    if (!use) {
      use = { handles: 0, borrowers: 0, idle: [] };
      this.live.set(device, use);
    }
    use.handles++;
    const entry = use;
    return releaseOnce(handle, async () => {
      if (--entry.handles === 0 && this.live.get(device) === entry) this.live.delete(device); // no new borrowers
      while (entry.borrowers > 0) await new Promise<void>((resolve) => entry.idle.push(resolve));
      await handle.release();
    });
  }

  /** Run `fn` on `device` while some client holds it open; undefined when none does. */
  async borrow<T>(device: BlockDevice, fn: (device: BlockDevice, alive: () => boolean) => Promise<T>): Promise<{ value: T } | undefined> {
    const use = this.live.get(device);
    if (!use) return undefined;
    use.borrowers++;
    try {
      return { value: await fn(device, () => this.live.get(device) === use) };
    } finally {
      if (--use.borrowers === 0) for (const wake of use.idle.splice(0)) wake();
    }
  }
}
