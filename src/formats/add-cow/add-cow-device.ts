/**
 * AddCowDevice: the add-cow format as a BlockDevice.
 *
 *   CheckedDevice ──► AddCowDevice ──┬──► image file (raw, guest data at the SAME offsets)
 *                                    ├──► .add-cow file (header + 1 bit per cluster)
 *                                    └──► backing BlockDevice (read-only, may be absent)
 *
 * Invariants
 *   - Virtual size = floor(image_len / 512) * 512, fixed at open (docs/add-cow-format.md#a2).
 *   - Bit c set ⇔ cluster c's bytes are valid in the image file; clear ⇔ read them from the
 *     backing device (zeros past its end, zeros when there is none).
 *   - ALL_ALLOCATED: bitmap and backing are ignored; every op goes straight to the image.
 *   - Bits are only ever set, and only in memory until a flush (BitmapPersister).
 *
 * Write / allocation (final add-cow code order, docs/add-cow-format.md#io):
 *   1. guest data → image file at the same offset;
 *   2. for a partially covered, still-unallocated first/last cluster, COW-fill the
 *      uncovered head/tail of that cluster from the backing device (never past the
 *      virtual end);
 *   3. set the bits of every touched cluster (memory; dirty page).
 *   Steps 1-3 run under per-CLUSTER locks for the clusters that were unallocated, so two
 *   writers to the same unallocated cluster cannot overwrite each other with COW-fill
 *   data. Writes to already-allocated clusters take no lock. Locks are taken in ascending
 *   cluster order (BlockLocks), so there is no deadlock.
 *
 * Hot paths: a read inside one run of equal bits (nearly every request) is one direct
 * call to the image file or the backing; block status of unallocated ranges comes from a
 * BackingExtentCache (the backing never changes while open), not from two threadpool
 * lseeks per query.
 *
 * Crash ordering: FLUSH/FUA = image fdatasync → dirty bitmap pages → .add-cow fdatasync.
 * A bit is set only after its data and COW-fill pwrites completed, and a page snapshot is
 * taken before the image sync, so no bit reaches the disk before its data. A crash before
 * the bitmap write leaves the backing data visible for that cluster: consistent.
 *
 * TRIM / WRITE_ZEROES use the same path with "zero the image range" as step 1 (punch a
 * hole / zero-range through native-fs when available, else write zeros).
 *
 * close() persists dirty bitmap pages with the same ordering: the bitmap is this driver's
 * only cached state, and dropping it would silently lose completed writes.
 */
import type { FileHandle } from 'node:fs/promises';
import {
  type BlockDevice,
  type DeviceCapabilities,
  EXTENT_HOLE,
  EXTENT_ZERO,
  type Extent,
  type IoOptions,
  type LayerInfo,
  type ZeroOptions,
} from '../../block/block-device.js';
import { mergeExtents } from '../../block/checked-device.js';
import { type FileIo, sparseExtents } from '../../block/file-io.js';
import type { AllocationBitmap } from '../allocation-bitmap.js';
import { overlayCapabilities } from '../overlay-capabilities.js';
import { BackingExtentCache } from '../backing-extent-cache.js';
import { BitmapPersister } from '../bitmap-persistence.js';
import { BlockLocks } from '../block-locks.js';
import type { AddCowHeader } from './add-cow-header.js';

/** Zero writes without native-fs go out in chunks of this size. */
const ZERO_CHUNK = 1024 * 1024;
const ZERO_BUFFER = Buffer.alloc(ZERO_CHUNK);
/** Stop collecting extents after this many (the caller asks again). */
const MAX_EXTENTS = 1024;

export interface AddCowDeviceParts {
  /** Path of the .add-cow metadata file. */
  readonly path: string;
  readonly header: AddCowHeader;
  /** Resolved path of the image file. */
  readonly imagePath: string;
  /** Resolved path of the backing file (undefined when none is recorded). */
  readonly backingPath: string | undefined;
  readonly backingFormat: string | undefined;
  readonly metaFile: FileHandle;
  readonly imageFile: FileHandle;
  /** Opened backing device; undefined when there is none or ALL_ALLOCATED is set. */
  readonly backing: BlockDevice | undefined;
  readonly size: number;
  readonly bitmap: AllocationBitmap;
  readonly readOnly: boolean;
  /** Data-path I/O (and the native addon, when the policy allows it). */
  readonly io: FileIo;
}

export class AddCowDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  readonly preferredBlockSize: number;
  readonly header: AddCowHeader;
  readonly bitmap: AllocationBitmap;
  private readonly cluster: number;
  private readonly locks = new BlockLocks();
  private readonly persister: BitmapPersister;
  private readonly backingExtents: BackingExtentCache | undefined;

  constructor(private readonly parts: AddCowDeviceParts) {
    this.size = parts.size;
    this.header = parts.header;
    this.bitmap = parts.bitmap;
    this.cluster = parts.header.clusterSize;
    this.preferredBlockSize = this.cluster;
    this.backingExtents = parts.backing ? new BackingExtentCache(parts.backing) : undefined;
    const writable = !parts.readOnly;
    this.capabilities = overlayCapabilities(writable, parts.io.native !== undefined);
    this.persister = new BitmapPersister(parts.bitmap, {
      file: parts.metaFile,
      offset: parts.header.headerSize,
      syncData: () => parts.imageFile.datasync(),
      syncMetadata: () => parts.metaFile.datasync(),
    });
  }

  get imagePath(): string {
    return this.parts.imagePath;
  }

  /** Format the backing is (or would be) opened with. */
  get backingFormat(): string | undefined {
    return this.parts.backingFormat;
  }

  get backingPath(): string | undefined {
    return this.parts.backingPath;
  }

  get allAllocated(): boolean {
    return this.header.allAllocated;
  }

  /** Bytes of the virtual disk held by the image file (whole disk when ALL_ALLOCATED). */
  get allocatedBytes(): number {
    if (this.allAllocated) return this.size;
    const n = this.bitmap.countSet();
    const lastCluster = this.bitmap.bitCount - 1;
    // The last cluster may be partial: count only its bytes inside the disk.
    const partial = this.bitmap.get(lastCluster) ? (lastCluster + 1) * this.cluster - this.size : 0;
    return n * this.cluster - partial;
  }

  // ----- read ------------------------------------------------------------------------

  read(offset: number, target: Buffer): Promise<void> {
    if (this.allAllocated) return this.parts.io.read(this.parts.imageFile, offset, target);
    const end = offset + target.length;
    const c = Math.floor(offset / this.cluster);
    const lastCluster = Math.floor((end - 1) / this.cluster);
    // Fast path (nearly every request): one run of equal bits → one call, no awaits here.
    if (c + this.bitmap.runLength(c, lastCluster - c + 1) > lastCluster) {
      return this.bitmap.get(c) ? this.parts.io.read(this.parts.imageFile, offset, target) : this.readBacking(offset, target);
    }
    return this.readRuns(offset, target);
  }

  private async readRuns(offset: number, target: Buffer): Promise<void> {
    const end = offset + target.length;
    const lastCluster = Math.floor((end - 1) / this.cluster);
    let pos = offset;
    while (pos < end) {
      const c = Math.floor(pos / this.cluster);
      const run = this.bitmap.runLength(c, lastCluster - c + 1);
      const runEnd = Math.min(end, (c + run) * this.cluster);
      const slice = target.subarray(pos - offset, runEnd - offset);
      if (this.bitmap.get(c)) await this.parts.io.read(this.parts.imageFile, pos, slice);
      else await this.readBacking(pos, slice);
      pos = runEnd;
    }
  }

  /** Backing bytes at `offset`; zeros past the backing's end or without a backing file. */
  private readBacking(offset: number, target: Buffer): Promise<void> {
    const backing = this.parts.backing;
    const available = backing ? Math.max(0, Math.min(target.length, backing.size - offset)) : 0;
    if (available === target.length) return backing!.read(offset, target);
    target.fill(0, available);
    return available > 0 ? backing!.read(offset, target.subarray(0, available)) : Promise.resolve();
  }

  // ----- write / trim / zero --------------------------------------------------------

  async write(offset: number, data: Buffer, options: IoOptions = {}): Promise<void> {
    await this.mutate(offset, data.length, () => this.parts.io.write(this.parts.imageFile, offset, data));
    if (options.fua) await this.flush();
  }

  async trim(offset: number, length: number, options: IoOptions = {}): Promise<void> {
    await this.mutate(offset, length, () => this.zeroImage(offset, length, false));
    if (options.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    await this.mutate(offset, length, () => this.zeroImage(offset, length, Boolean(options.noHole)));
    if (options.fua) await this.flush();
  }

  /**
   * Steps 1-3 of the design note for [offset, offset+length): `writeGuest` puts the new
   * contents into the image file; partial unallocated clusters are COW-filled; bits set.
   */
  private async mutate(offset: number, length: number, writeGuest: () => Promise<void>): Promise<void> {
    if (this.allAllocated) return writeGuest();
    const end = offset + length;
    const first = Math.floor(offset / this.cluster);
    const last = Math.floor((end - 1) / this.cluster);
    const unallocated = this.unallocatedClusters(first, last);
    if (unallocated.length === 0) return writeGuest();

    await this.locks.run(unallocated, async () => {
      await writeGuest();
      // Re-check under the lock: another writer may have allocated the cluster meanwhile.
      if (!this.bitmap.get(first) && offset > first * this.cluster) {
        await this.copyFromBacking(first * this.cluster, offset);
      }
      const lastEnd = Math.min((last + 1) * this.cluster, this.size);
      if (!this.bitmap.get(last) && end < lastEnd) {
        await this.copyFromBacking(end, lastEnd);
      }
      this.bitmap.setRange(first, last - first + 1);
    });
  }

  private unallocatedClusters(first: number, last: number): number[] {
    const out: number[] = [];
    let c = first;
    while (c <= last) {
      const run = this.bitmap.runLength(c, last - c + 1);
      if (!this.bitmap.get(c)) for (let i = c; i < c + run; i++) out.push(i);
      c += Math.max(run, 1);
    }
    return out;
  }

  /** COW-fill: copy backing bytes [start, end) (zeros past its end) into the image file. */
  private async copyFromBacking(start: number, end: number): Promise<void> {
    const buf = Buffer.allocUnsafe(end - start);
    await this.readBacking(start, buf);
    await this.parts.io.write(this.parts.imageFile, start, buf);
  }

  private async zeroImage(offset: number, length: number, noHole: boolean): Promise<void> {
    const native = this.parts.io.native;
    if (native) {
      const fd = this.parts.imageFile.fd;
      if (noHole) return native.zeroRange(fd, offset, length);
      try {
        return await native.punchHole(fd, offset, length);
      } catch (err) {
        // A filesystem that cannot punch holes: fall through to writing zeros.
        if ((err as NodeJS.ErrnoException).code !== 'ENOTSUP') throw err;
      }
    }
    for (let done = 0; done < length; done += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, length - done);
      await this.parts.io.write(this.parts.imageFile, offset + done, ZERO_BUFFER.subarray(0, n));
    }
  }

  // ----- flush / status / lifecycle -------------------------------------------------

  async flush(): Promise<void> {
    if (this.parts.readOnly) return;
    if (this.allAllocated) return this.parts.imageFile.datasync();
    await this.persister.flush();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    if (this.allAllocated) return this.imageStatus(offset, length);
    const end = offset + length;
    const lastCluster = Math.floor((end - 1) / this.cluster);
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end && out.length < MAX_EXTENTS) {
      const c = Math.floor(pos / this.cluster);
      const run = this.bitmap.runLength(c, lastCluster - c + 1);
      const runEnd = Math.min(end, (c + run) * this.cluster);
      const extents = this.bitmap.get(c) ? await this.imageStatus(pos, runEnd - pos) : await this.backingStatus(pos, runEnd - pos);
      for (const e of extents) out.push(e);
      pos += extents.reduce((sum, e) => sum + e.length, 0);
    }
    return mergeExtents(out);
  }

  /** Allocated range: depth 1; a hole in the image file reads as zeros (when detectable). */
  private async imageStatus(offset: number, length: number): Promise<Extent[]> {
    const native = this.parts.io.native;
    if (!native) return [{ length, flags: 0, depth: 1 }];
    return sparseExtents(native, this.parts.imageFile.fd, offset, length, 1);
  }

  /** Unallocated range: the backing's status one level deeper; zeros (depth 0) past its end. */
  private async backingStatus(offset: number, length: number): Promise<Extent[]> {
    const backing = this.parts.backing;
    const inBacking = backing ? Math.max(0, Math.min(length, backing.size - offset)) : 0;
    if (inBacking === 0) return [{ length, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 0 }];
    // Cached: the backing never changes while we are open (backing-extent-cache.ts).
    const extents = await this.backingExtents!.extents(offset, inBacking);
    return extents.map((e) => ({ length: e.length, flags: e.flags, depth: e.depth + 1 }));
  }

  async cache(): Promise<void> {}

  async close(): Promise<void> {
    try {
      if (!this.parts.readOnly && !this.allAllocated && this.bitmap.hasDirty) await this.persister.flush();
    } finally {
      await this.parts.imageFile.close().catch(() => {});
      await this.parts.metaFile.close().catch(() => {});
      await this.parts.backing?.close();
    }
  }

  describe(): LayerInfo {
    const h = this.header;
    const info: LayerInfo = {
      format: 'add-cow',
      path: this.parts.path,
      detail: {
        size: this.size,
        clusterSize: h.clusterSize,
        imageFile: this.parts.imagePath,
        imageFormat: h.imageFormat,
        backingFile: this.parts.backingPath ?? null,
        backingFormat: this.parts.backingFormat ?? null,
        allAllocated: h.allAllocated,
        allocatedBytes: this.allocatedBytes,
      },
    };
    const backing = this.parts.backing?.describe();
    return backing ? { ...info, backing } : info;
  }
}
