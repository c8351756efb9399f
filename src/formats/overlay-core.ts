/**
 * OverlayCore: what every copy-on-write overlay driver (cow, add-cow) does the same way,
 * composed into the drivers (never subclassed). A driver keeps only what differs: its
 * header, its allocation unit (cow: 512-byte sector, add-cow: cluster), where guest data
 * lives (cow: the overlay file at dataOffset; add-cow: the image file at the same
 * offsets) and how a write allocates (cow: sector read-modify-write; add-cow: COW-fill).
 *
 *   read         split into runs of equal allocation bits; set → data file, clear →
 *                backing (zeros past its end or without one). A read inside ONE run —
 *                nearly every request — is one direct call: no arrays, closures or
 *                Promise.all on the hot path.
 *   blockStatus  set runs: SEEK_DATA/HOLE on the data file, depth 1; clear runs: the
 *                backing's extents one level deeper from a BackingExtentCache (the backing
 *                never changes while open); past the backing's end: zeros, depth 0.
 *   zeroData     punch a hole / zero-range (native), else write zeros in ZERO_CHUNK pieces.
 *   flush        BitmapPersister: data fdatasync before the dirty bitmap pages.
 *   periodic     writable: the same flush every IoPolicy.bitmapSyncMs while bitmap pages
 *                are dirty, so a process kill loses at most that long of allocations
 *                (bitmap-persistence.ts; docs/cow-format.md#c15).
 *   close        stops the periodic sync, persists dirty bitmap pages (same ordering) when
 *                writable, then closes the files and the backing: completed writes are
 *                never silently dropped.
 *
 * Invariant the drivers keep: a bit is set only after its data write completed, and
 * noteWrite() is called for every data write, so flush knows to sync the data file.
 */
import type { FileHandle } from 'node:fs/promises';
import { EXTENT_HOLE, EXTENT_ZERO, type BlockDevice, type Extent } from '../block/block-device.js';
import { mergeExtents } from '../block/checked-device.js';
import { MAX_EXTENTS_PER_CALL, type FileIo } from '../block/file-io.js';
import { DEFAULT_BITMAP_SYNC_MS } from '../block/io-policy.js';
import type { AllocationBitmap } from './allocation-bitmap.js';
import { BackingExtentCache } from './backing-extent-cache.js';
import { BitmapPersister } from './bitmap-persistence.js';

/** Zero writes without native-fs go out in chunks of this size from one zero buffer. */
const ZERO_CHUNK = 1024 * 1024;
const ZEROS = Buffer.alloc(ZERO_CHUNK);

export interface OverlayParts {
  /** Virtual size in bytes. */
  readonly size: number;
  /** Bytes per allocation bit. */
  readonly unit: number;
  readonly bitmap: AllocationBitmap;
  /** The file holding guest data, and where disk offset 0 lies in it. */
  readonly dataFile: FileHandle;
  readonly dataOffset: number;
  /** The file holding the bitmap, and where bitmap byte 0 lies in it. */
  readonly bitmapFile: FileHandle;
  readonly bitmapOffset: number;
  /** Read-only backing device; undefined: clear bits read as zeros. */
  readonly backing: BlockDevice | undefined;
  readonly readOnly: boolean;
  readonly io: FileIo;
}

export class OverlayCore {
  readonly bitmap: AllocationBitmap;
  private readonly unit: number;
  private readonly persister: BitmapPersister;
  private readonly backingCache: BackingExtentCache | undefined;

  constructor(private readonly parts: OverlayParts) {
    this.bitmap = parts.bitmap;
    this.unit = parts.unit;
    this.backingCache = parts.backing ? new BackingExtentCache(parts.backing) : undefined;
    this.persister = new BitmapPersister(parts.bitmap, {
      file: parts.bitmapFile,
      offset: parts.bitmapOffset,
      syncData: () => parts.dataFile.datasync(),
      syncMetadata: () => parts.bitmapFile.datasync(),
      io: parts.io,
    });
    if (!parts.readOnly) this.persister.startPeriodicSync(parts.io.policy.bitmapSyncMs ?? DEFAULT_BITMAP_SYNC_MS);
  }

  get backing(): BlockDevice | undefined {
    return this.parts.backing;
  }

  // ---- reads ---------------------------------------------------------------------------

  read(offset: number, target: Buffer): Promise<void> {
    const first = Math.floor(offset / this.unit);
    const end = Math.ceil((offset + target.length) / this.unit);
    // get() and runLength() are synchronous: the run is a consistent snapshot.
    if (first + this.bitmap.runLength(first, end - first) >= end) {
      return this.bitmap.get(first) ? this.readData(offset, target) : this.readBacking(offset, target);
    }
    return this.readRuns(offset, target);
  }

  private async readRuns(offset: number, target: Buffer): Promise<void> {
    const end = offset + target.length;
    const lastUnit = Math.ceil(end / this.unit);
    const parts: Promise<void>[] = [];
    for (let pos = offset; pos < end; ) {
      const u = Math.floor(pos / this.unit);
      const runEnd = Math.min(end, (u + this.bitmap.runLength(u, lastUnit - u)) * this.unit);
      const slice = target.subarray(pos - offset, runEnd - offset);
      parts.push(this.bitmap.get(u) ? this.readData(pos, slice) : this.readBacking(pos, slice));
      pos = runEnd;
    }
    await Promise.all(parts);
  }

  /** Guest data held by this layer (past the data file's end: zeros). */
  readData(pos: number, target: Buffer): Promise<void> {
    return this.parts.io.read(this.parts.dataFile, this.parts.dataOffset + pos, target);
  }

  /** Backing bytes at `pos`; zeros past the backing's end or without a backing. */
  readBacking(pos: number, target: Buffer): Promise<void> {
    const backing = this.parts.backing;
    const avail = backing ? Math.max(0, Math.min(target.length, backing.size - pos)) : 0;
    if (avail === target.length) return backing!.read(pos, target);
    target.fill(0, avail);
    return avail > 0 ? backing!.read(pos, target.subarray(0, avail)) : Promise.resolve();
  }

  // ---- writes --------------------------------------------------------------------------

  /** Write guest data at disk offset `pos` (the driver sets bits afterwards). */
  async writeData(pos: number, data: Buffer): Promise<void> {
    await this.parts.io.write(this.parts.dataFile, this.parts.dataOffset + pos, data);
    this.persister.noteDataWritten();
  }

  /**
   * writeData done synchronously into the page cache when FileIo can (FileIo.writeNow);
   * false: nothing was written, use writeData. The caller sets bits right after, in the
   * same turn (data-then-bit order, no await in between).
   */
  writeDataNow(pos: number, data: Buffer): boolean {
    if (!this.parts.io.writeNow(this.parts.dataFile, this.parts.dataOffset + pos, data)) return false;
    this.persister.noteDataWritten();
    return true;
  }

  /** Make disk range [pos, pos+len) of the data file read as zeros. */
  async zeroData(pos: number, len: number, noHole: boolean): Promise<void> {
    this.persister.noteDataWritten();
    const native = this.parts.io.native;
    const at = this.parts.dataOffset + pos;
    if (native) {
      try {
        if (noHole) await native.zeroRange(this.parts.dataFile.fd, at, len);
        else await native.punchHole(this.parts.dataFile.fd, at, len);
        return;
      } catch (err) {
        // A filesystem that cannot punch holes: fall back to writing zeros below.
        if ((err as NodeJS.ErrnoException).code !== 'ENOTSUP') throw err;
      }
    }
    for (let done = 0; done < len; done += ZERO_CHUNK) {
      await this.parts.io.write(this.parts.dataFile, at + done, ZEROS.subarray(0, Math.min(ZERO_CHUNK, len - done)));
    }
  }

  // ---- status --------------------------------------------------------------------------

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const end = offset + length;
    const lastUnit = Math.ceil(end / this.unit);
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end && out.length < MAX_EXTENTS_PER_CALL) {
      const u = Math.floor(pos / this.unit);
      const runEnd = Math.min(end, (u + this.bitmap.runLength(u, lastUnit - u)) * this.unit);
      const got = this.bitmap.get(u) ? await this.dataStatus(pos, runEnd - pos) : await this.backingStatus(pos, runEnd - pos);
      const covered = got.reduce((sum, e) => sum + e.length, 0);
      out.push(...got);
      pos += covered;
      if (covered === 0) break;
    }
    return mergeExtents(out);
  }

  /** Range held by this layer: depth 1; a hole in the data file reads as zeros (when detectable). */
  dataStatus(pos: number, len: number): Promise<Extent[]> {
    if (!this.parts.io.native) return Promise.resolve([{ length: len, flags: 0, depth: 1 }]);
    return this.parts.io.extents(this.parts.dataFile.fd, this.parts.dataOffset + pos, len, 1);
  }

  /** Range not held here: the backing's status one level deeper; zeros (depth 0) past its end. */
  private async backingStatus(pos: number, len: number): Promise<Extent[]> {
    const backing = this.parts.backing;
    const inBacking = backing ? Math.max(0, Math.min(len, backing.size - pos)) : 0;
    const out: Extent[] = [];
    if (inBacking > 0) {
      // Cached: the backing never changes while we are open (backing-extent-cache.ts).
      // Depth 0 (no layer below holds it: an unallocated qcow2 cluster) stays 0.
      for (const e of await this.backingCache!.extents(pos, inBacking)) out.push({ length: e.length, flags: e.flags, depth: e.depth === 0 ? 0 : e.depth + 1 });
    }
    if (inBacking < len) out.push({ length: len - inBacking, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 0 });
    return out;
  }

  // ---- durability and lifecycle --------------------------------------------------------

  flush(): Promise<void> {
    return this.persister.flush();
  }

  /**
   * The one close() contract of both overlay formats: dirty bitmap pages are persisted
   * (data first), then the files and the backing are closed. Callers that need the DATA
   * of later writes durable flush first, as for any device.
   */
  async close(extraFiles: readonly FileHandle[] = []): Promise<void> {
    try {
      // A periodic persist may be writing into these files: let it finish before they close.
      await this.persister.stop();
      if (!this.parts.readOnly && this.bitmap.hasDirty) await this.persister.flush();
    } finally {
      await this.parts.dataFile.close().catch(() => {});
      if (this.parts.bitmapFile !== this.parts.dataFile) await this.parts.bitmapFile.close().catch(() => {});
      for (const f of extraFiles) await f.close().catch(() => {});
      await this.parts.backing?.close();
    }
  }
}
