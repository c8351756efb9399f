/**
 * Live snapshots: freeze an export's top cow overlay and stack a new empty one on it
 * without disconnecting anyone (file layout and crash safety: src/formats/cow/cow-layers.ts).
 *
 *   old.flush(); prepare the layer files                 (writers keep running)
 *   ── pause ── running requests finish on the old top; the frozen layer's mtime is
 *               restored; the new top is renamed into place and opened with the OLD
 *               DEVICE ITSELF, read-only, as its backing (no reopen, no bitmap re-read)
 *   ── resume ─ writes go to the new top; in the background: old.flush() (writes since
 *               the first flush) + fsync of the frozen layer and the directory
 *
 * A FLUSH on the new top waits for that background work (SwappableDevice's barrier), so
 * "every write completed before the FLUSH is durable" holds across the switch. The old
 * device receives no writes after the pause; it is closed after the new top (static
 * exports), or by its provider when its last user ends (per-machine overlays, the first
 * layer: the snapshot itself counts as a user until it returns, GuardedProvider.withPinned,
 * so a client leaving mid-snapshot never closes the device under it); a restart or
 * reconnect opens the same chain from the files.
 */
import type { BlockDevice } from '../block/block-device.js';
import { CheckedDevice } from '../block/checked-device.js';
import { FileIo } from '../block/file-io.js';
import { FORMAT_NAMES } from '../formats/registry.js';
import { abortCowLayer, commitCowLayer, prepareCowLayer, settleCowLayer, stackCowLayer } from '../formats/cow/cow-layers.js';
import { openCow } from '../formats/cow/index.js';
import { META_QEMU_DIRTY_BITMAP_PREFIX } from '../protocol/constants.js';
import { snapshotBitmapName } from '../server/dirty-bitmaps.js';
import type { SwappableDevice } from './swappable-device.js';

export interface SnapshotResult {
  /** The path of the top overlay (unchanged: the configuration keeps naming it). */
  readonly top: string;
  /** The frozen layer, now read-only. */
  readonly frozen: string;
  /** The metadata context of what changes from now on (docs/incremental-backup.md). */
  readonly dirtyBitmap: string;
  /** How long requests were held (ms); 0 when nobody was connected. */
  readonly pauseMs: number;
  readonly live: boolean;
}

/** Snapshot a device in use (who closes the old top: see SwappableDevice). */
export async function liveSnapshot(device: SwappableDevice, top: string, io: FileIo | undefined): Promise<SnapshotResult> {
  // Most dirty data reaches the disk while clients keep writing.
  await device.current.flush();
  const prepared = await prepareCowLayer(top, device.size);
  let committed = false;
  try {
    const { pauseMs, settled } = await device.swap(
      async (old) => {
        await commitCowLayer(prepared);
        committed = true;
        const backing = new NonClosing(new CheckedDevice(old, { readOnly: true }), prepared.frozen);
        const driver = await openCow(top, {
          readOnly: false,
          io: io ?? new FileIo(),
          openBacking: () => Promise.resolve(backing),
          knownFormats: FORMAT_NAMES,
          backingFormat: 'cow',
        });
        const settledWork = (async () => {
          await old.flush();
          await settleCowLayer(prepared);
        })();
        return { device: new CheckedDevice(driver), settled: settledWork };
      },
    );
    await settled;
    return { top, frozen: prepared.frozen, dirtyBitmap: bitmapContext(top, prepared.frozen), pauseMs: Math.round(pauseMs * 1000) / 1000, live: true };
  } catch (err) {
    if (!committed) await abortCowLayer(prepared);
    throw err;
  }
}

/** Snapshot an overlay nobody has open: only files change. */
export async function offlineSnapshot(top: string, virtualSize: number): Promise<SnapshotResult> {
  const frozen = await stackCowLayer(top, virtualSize);
  return { top, frozen, dirtyBitmap: bitmapContext(top, frozen), pauseMs: 0, live: false };
}

function bitmapContext(top: string, frozen: string): string {
  return META_QEMU_DIRTY_BITMAP_PREFIX + snapshotBitmapName(top, frozen)!;
}

/** The old top as a backing: its owner closes it, not the layer stacked on it. */
class NonClosing implements BlockDevice {
  readonly size: number;
  readonly capabilities: BlockDevice['capabilities'];
  readonly preferredBlockSize: number;
  constructor(
    private readonly d: BlockDevice,
    /** The layer's file is now known by this name. */
    private readonly path: string,
  ) {
    this.size = d.size;
    this.capabilities = d.capabilities;
    this.preferredBlockSize = d.preferredBlockSize;
  }
  read(offset: number, target: Buffer): Promise<void> {
    return this.d.read(offset, target);
  }
  write(offset: number, data: Buffer): Promise<void> {
    return this.d.write(offset, data);
  }
  flush(): Promise<void> {
    return this.d.flush();
  }
  trim(offset: number, length: number): Promise<void> {
    return this.d.trim(offset, length);
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.d.writeZeroes(offset, length);
  }
  blockStatus(offset: number, length: number): ReturnType<BlockDevice['blockStatus']> {
    return this.d.blockStatus(offset, length);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.d.cache(offset, length);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  describe(): ReturnType<BlockDevice['describe']> {
    return { ...this.d.describe(), path: this.path };
  }
}
