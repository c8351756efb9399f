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
import type { BlockDevice, DeviceCapabilities, Extent, IoOptions, LayerInfo, ZeroOptions } from '../../block/block-device.js';
import type { FileIo } from '../../block/file-io.js';
import type { AllocationBitmap } from '../allocation-bitmap.js';
import { BlockLocks } from '../block-locks.js';
import { OverlayCore } from '../overlay-core.js';
import { overlayCapabilities } from '../overlay-capabilities.js';
import type { AddCowHeader } from './add-cow-header.js';

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
  private readonly core: OverlayCore;

  constructor(private readonly parts: AddCowDeviceParts) {
    this.size = parts.size;
    this.header = parts.header;
    this.bitmap = parts.bitmap;
    this.cluster = parts.header.clusterSize;
    this.preferredBlockSize = this.cluster;
    this.capabilities = overlayCapabilities(!parts.readOnly, parts.io.native !== undefined);
    // Guest data lives in the image file at the same offsets; the bitmap follows the header.
    this.core = new OverlayCore({
      size: parts.size,
      unit: this.cluster,
      bitmap: parts.bitmap,
      dataFile: parts.imageFile,
      dataOffset: 0,
      bitmapFile: parts.metaFile,
      bitmapOffset: parts.header.headerSize,
      backing: parts.backing,
      readOnly: parts.readOnly,
      io: parts.io,
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
    if (this.allAllocated) return this.core.readData(offset, target);
    return this.core.read(offset, target);
  }

  // ----- write / trim / zero --------------------------------------------------------

  async write(offset: number, data: Buffer, options: IoOptions = {}): Promise<void> {
    await this.mutate(offset, data.length, () => this.core.writeData(offset, data));
    if (options.fua) await this.flush();
  }

  async trim(offset: number, length: number, options: IoOptions = {}): Promise<void> {
    await this.mutate(offset, length, () => this.core.zeroData(offset, length, false));
    if (options.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    await this.mutate(offset, length, () => this.core.zeroData(offset, length, Boolean(options.noHole)));
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
    await this.core.readBacking(start, buf);
    await this.core.writeData(start, buf);
  }

  // ----- flush / status / lifecycle -------------------------------------------------

  async flush(): Promise<void> {
    if (this.parts.readOnly) return;
    if (this.allAllocated) return this.parts.imageFile.datasync();
    await this.core.flush();
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    // ALL_ALLOCATED: the image file alone is the disk (depth 1 everywhere).
    if (this.allAllocated) return this.core.dataStatus(offset, length);
    return this.core.blockStatus(offset, length);
  }

  async cache(): Promise<void> {}

  /** The overlay close() contract (overlay-core.ts): dirty bitmap pages persisted, data first. */
  close(): Promise<void> {
    return this.core.close();
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
