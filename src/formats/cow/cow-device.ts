/**
 * CowDevice: a UML COW file as a BlockDevice (docs/cow-format.md#bitmap and
 * docs/cow-format.md#uml-io).
 *
 *   read  ──► split into runs of equal bits (AllocationBitmap.runLength)
 *             set run   → pread COW file at dataOffset + off (past EOF: zeros)
 *             unset run → backing device at off (past the backing's end: zeros, docs/cow-format.md#c9)
 *             (a request inside ONE run — nearly all — is one direct call: no arrays,
 *             closures or Promise.all on the hot path)
 *   write ──► SectorWriteLock (only partial edge sectors exclude others; whole-sector
 *             writes take the lock's O(1) path and skip the span/edge bookkeeping)
 *             → ONE pwrite of the sector-aligned span (partial edge sectors are
 *               completed from the current view first: read-modify-write)
 *             → set bits in memory (dirty pages), never on disk yet
 *   block status ─► set runs: SEEK_DATA/HOLE on the COW file; unset runs: the backing's
 *             extents from a BackingExtentCache (the backing never changes under us;
 *             the server asks before every structured read >= 64 KiB, and uncached that
 *             was two threadpool lseeks per read — on tmpfs a scan to the next hole)
 *   flush ──► snapshot dirty bitmap pages → fdatasync(COW) → pwrite the snapshot
 *             → fdatasync, serialised by an async-mutex (concurrent flushes coalesce)
 *
 * Invariants:
 *   - A bit is set in memory only after its sector's data write completed, and a bitmap
 *     page reaches the disk only inside flush, after an fdatasync that began after every
 *     bit in the snapshot was set. So on a crash no bit on disk claims data that is not
 *     durable (overlay data before bitmap bit). FUA = the write, then a flush.
 *   - The backing device is opened read-only by the caller and never written.
 *   - Bits are never cleared. TRIM and WRITE_ZEROES set the bits and leave zeros in the
 *     data area (a punched hole), as UML does (docs/cow-format.md#c17): the backing's data must not shine
 *     through afterwards. Without the native addon WRITE_ZEROES writes zeros and TRIM is
 *     not offered (a hint the spec lets us ignore; zero-filling a 4 GiB discard would
 *     outlast the kernel's request timeout).
 *   - Sectors without a bit in the layout (v1/v2 rounding quirk, docs/cow-format.md#c11; QEMU's partial last
 *     sector) read from the backing and refuse writes with EIO.
 *   - No image-wide lock: reads take no lock, and writes of different sectors (or whole
 *     sectors of the same range) proceed concurrently.
 */
import type { FileHandle } from 'node:fs/promises';
import { type BlockDevice, type DeviceCapabilities, DeviceError, type Extent, type IoOptions, type LayerInfo, type ZeroOptions } from '../../block/block-device.js';
import type { FileIo } from '../../block/file-io.js';
import { AllocationBitmap, type BitmapSource } from '../allocation-bitmap.js';
import { OverlayCore } from '../overlay-core.js';
import { overlayCapabilities } from '../overlay-capabilities.js';
import { COW_SECTOR_SIZE as SECTOR, type CowHeader } from './cow-header.js';
import type { CowGeometry } from './cow-layout.js';
import { SectorWriteLock } from './cow-write-lock.js';

const NO_EDGES: readonly number[] = [];
const DONE = Promise.resolve();
/**
 * Bitmap page (loading, eviction, dirty tracking): 1 KiB = 8192 sectors = 4 MiB of disk.
 * Scattered writes touch one page each, so memory after N scattered writes is ~N KiB
 * (4 KiB pages measured 4x that on a 1 TiB overlay); a flush writes 1 KiB per dirty page.
 */
const BITMAP_PAGE = 1024;

export interface CowDeviceInit {
  readonly path: string;
  readonly fh: FileHandle;
  readonly header: CowHeader;
  readonly geometry: CowGeometry;
  /** The bitmap: its bytes, or (served overlays) a source its pages are loaded from on demand. */
  readonly bitmapBytes: Buffer | BitmapSource;
  readonly backing: BlockDevice;
  readonly backingStored: string;
  readonly backingResolved: string;
  readonly readOnly: boolean;
  /** Data-path I/O (and the native addon, when the policy allows it). */
  readonly io: FileIo;
}

/** Read-only view of the allocation bitmap for tools (one bit per 512-byte sector). */
export interface CowBitmapView {
  readonly sectors: number;
  isAllocated(sector: number): boolean;
  /** Run of sectors with the same state as `sector`, at most `max` long. */
  runLength(sector: number, max: number): number;
  countAllocated(): number;
  /** Copy of the in-memory bitmap bytes (bitmapLength bytes, as they will be on disk). */
  copyBytes(): Buffer;
  /** Bitmap pages held in memory (pages are loaded on demand; see allocation-bitmap.ts). */
  residentPages(): number;
}

export interface CowInspection {
  readonly path: string;
  readonly layout: CowHeader['layout'];
  readonly header: CowHeader;
  readonly geometry: CowGeometry;
  readonly backingFile: { readonly stored: string; readonly resolved: string };
  /** Format the backing device was opened with. */
  readonly backingFormat: string;
  readonly bitmap: CowBitmapView;
}

export class CowDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  readonly preferredBlockSize = 4096;

  private readonly core: OverlayCore;
  private readonly bitmap: AllocationBitmap;
  private readonly writable: number;
  private readonly lock = new SectorWriteLock();

  constructor(private readonly init: CowDeviceInit) {
    const g = init.geometry;
    this.size = g.virtualSize;
    this.writable = g.representableSectors;
    // Tail garbage past the last representable sector is ignored (docs/cow-format.md#c6).
    this.bitmap = new AllocationBitmap(g.sectors, g.bitmapLength, BITMAP_PAGE, init.bitmapBytes, { clearFrom: g.representableSectors });
    this.capabilities = overlayCapabilities(!init.readOnly, init.io.native !== undefined);
    this.core = new OverlayCore({
      size: this.size,
      unit: SECTOR,
      bitmap: this.bitmap,
      dataFile: init.fh,
      dataOffset: g.dataOffset,
      bitmapFile: init.fh,
      bitmapOffset: g.bitmapOffset,
      backing: init.backing,
      readOnly: init.readOnly,
      io: init.io,
    });
  }

  // ---- reads -------------------------------------------------------------------------

  read(offset: number, target: Buffer): Promise<void> {
    return this.core.read(offset, target);
  }

  // ---- writes ------------------------------------------------------------------------

  write(offset: number, data: Buffer, options: IoOptions = {}): Promise<void> {
    try {
      if (!options.fua && this.tryWriteNow(offset, data)) return DONE;
    } catch (err) {
      return Promise.reject(err); // e.g. ENOSPC from the synchronous pwrite: bits not set
    }
    return this.writeQueued(offset, data, options);
  }

  private async writeQueued(offset: number, data: Buffer, options: IoOptions): Promise<void> {
    if (offset % SECTOR === 0 && data.length % SECTOR === 0) await this.writeAligned(offset, data);
    else await this.writeUnaligned(offset, data);
    if (options.fua) await this.flush();
  }

  /**
   * The 4 KiB random-write fast path: a whole-sector write that no partial write can
   * conflict with (the lock is free for whole sectors), written synchronously into the page
   * cache (FileIo.writeNow), bits set right after — the same data-then-bit order as
   * writeAligned, with no await in between, so no lock, promise chain or closure is needed.
   * Measured with callgrind: see docs/performance.md.
   */
  private tryWriteNow(offset: number, data: Buffer): boolean {
    if (offset % SECTOR !== 0 || data.length % SECTOR !== 0 || data.length === 0 || !this.lock.wholeSectorsFree) return false;
    const first = offset / SECTOR;
    const end = first + data.length / SECTOR;
    if (end > this.writable) return false; // writeAligned reports it
    if (!this.core.writeDataNow(offset, data)) return false;
    this.bitmap.setRange(first, end - first);
    return true;
  }

  /**
   * Whole sectors (what every real client sends): no read-modify-write, so no edges in
   * the lock and the caller's buffer goes straight to the data area in one pwrite. Same
   * order as mutate(): data write completes, then the bits are set, under the lock (a
   * partial write waiting for these sectors must see the bits when it reads them).
   */
  private async writeAligned(offset: number, data: Buffer): Promise<void> {
    if (data.length === 0) return;
    const first = offset / SECTOR;
    const end = first + data.length / SECTOR;
    if (end > this.writable) throw this.unwritable(first);
    await this.lock.run(first, end, NO_EDGES, async () => {
      await this.core.writeData(offset, data);
      this.bitmap.setRange(first, end - first);
    });
  }

  private async writeUnaligned(offset: number, data: Buffer): Promise<void> {
    await this.mutate(offset, data.length, async (span) => {
      const buf = await this.completeEdges(span, offset, data.length);
      data.copy(buf, offset - span.start);
      await this.core.writeData(span.start, buf);
    });
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    await this.zeroRange(offset, length, Boolean(options.noHole));
    if (options.fua) await this.flush();
  }

  async trim(offset: number, length: number, options: IoOptions = {}): Promise<void> {
    await this.zeroRange(offset, length, false);
    if (options.fua) await this.flush();
  }

  private async zeroRange(offset: number, length: number, noHole: boolean): Promise<void> {
    await this.mutate(offset, length, async (span) => {
      const bodyStart = span.headPartial ? span.start + SECTOR : span.start;
      const bodyEnd = span.tailPartial ? span.end - SECTOR : span.end;
      const io: Promise<void>[] = [];
      if (span.headPartial || span.tailPartial) {
        // Partial sectors: RMW with zeros (only the edge sectors, not the whole span).
        const edges = span.headPartial && span.tailPartial && span.end - span.start === SECTOR ? [span.start] : [
          ...(span.headPartial ? [span.start] : []),
          ...(span.tailPartial ? [span.end - SECTOR] : []),
        ];
        for (const sectorStart of edges) {
          io.push(
            (async () => {
              const buf = Buffer.alloc(SECTOR);
              await this.read(sectorStart, buf);
              const from = Math.max(offset, sectorStart) - sectorStart;
              const to = Math.min(offset + length, sectorStart + SECTOR) - sectorStart;
              buf.fill(0, from, to);
              await this.core.writeData(sectorStart, buf);
            })(),
          );
        }
      }
      if (bodyEnd > bodyStart) io.push(this.core.zeroData(bodyStart, bodyEnd - bodyStart, noHole));
      await Promise.all(io);
    });
  }

  /**
   * Common frame of every mutation: refuse sectors the layout cannot represent, take
   * the write lock, do the data I/O, then (and only then) set the bits in memory.
   */
  private async mutate(offset: number, length: number, io: (span: Span) => Promise<void>): Promise<void> {
    if (length === 0) return;
    const first = Math.floor(offset / SECTOR);
    const end = Math.ceil((offset + length) / SECTOR);
    if (end > this.writable) throw this.unwritable(first);
    const span: Span = {
      start: first * SECTOR,
      end: end * SECTOR,
      headPartial: offset % SECTOR !== 0 || offset + length < (first + 1) * SECTOR,
      tailPartial: (offset + length) % SECTOR !== 0,
    };
    const edges: number[] = [];
    if (span.headPartial) edges.push(first);
    if (span.tailPartial && end - 1 !== first) edges.push(end - 1);
    await this.lock.run(first, end, edges, async () => {
      await io(span);
      this.bitmap.setRange(first, end - first);
    });
  }

  private unwritable(first: number): DeviceError {
    return new DeviceError(
      'EIO',
      `${this.init.path}: sector ${Math.max(first, this.writable)} has no bit in this ${this.init.header.layout} COW ` +
        `(bitmap covers ${this.writable} of ${this.init.geometry.sectors} sectors; the v1/v2 bitmap is one byte short): not writable`,
    );
  }

  /** Buffer for the whole span with the partial edge sectors filled from the current view. */
  private async completeEdges(span: Span, offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(span.end - span.start);
    const reads: Promise<void>[] = [];
    if (offset > span.start || offset + length < span.start + SECTOR) {
      reads.push(this.read(span.start, buf.subarray(0, SECTOR)));
    }
    const tailSector = span.end - SECTOR;
    if ((offset + length) % SECTOR !== 0 && tailSector !== span.start) {
      reads.push(this.read(tailSector, buf.subarray(tailSector - span.start)));
    }
    await Promise.all(reads);
    return buf;
  }

  // ---- durability, status, lifecycle (overlay-core.ts) -------------------------------

  flush(): Promise<void> {
    return this.core.flush();
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.core.blockStatus(offset, length);
  }

  async cache(): Promise<void> {}

  /** Persists dirty bitmap pages (data first), then closes the file and the backing. */
  close(): Promise<void> {
    return this.core.close();
  }

  // ---- introspection -----------------------------------------------------------------

  describe(): LayerInfo {
    const { header: h, geometry: g } = this.init;
    return {
      format: 'cow',
      path: this.init.path,
      detail: {
        layout: h.layout,
        version: h.version,
        size: h.size,
        virtualSize: g.virtualSize,
        mtime: h.mtime,
        sectorSize: h.sectorSize,
        alignment: h.alignment,
        bitmapOffset: g.bitmapOffset,
        bitmapLength: g.bitmapLength,
        dataOffset: g.dataOffset,
        backingFile: h.backingFile,
        backingResolved: this.init.backingResolved,
        allocatedBytes: this.bitmap.countSet() * SECTOR,
      },
      backing: this.init.backing.describe(),
    };
  }

  inspect(): CowInspection {
    const bitmap = this.bitmap;
    return {
      path: this.init.path,
      layout: this.init.header.layout,
      header: this.init.header,
      geometry: this.init.geometry,
      backingFile: { stored: this.init.backingStored, resolved: this.init.backingResolved },
      backingFormat: this.init.backing.describe().format,
      bitmap: {
        sectors: bitmap.bitCount,
        isAllocated: (sector) => bitmap.get(sector),
        runLength: (sector, max) => bitmap.runLength(sector, max),
        countAllocated: () => bitmap.countSet(),
        copyBytes: () => bitmap.copyBytes(),
        residentPages: () => bitmap.residentPages,
      },
    };
  }
}

interface Span {
  /** Sector-aligned byte range covering the request. */
  readonly start: number;
  readonly end: number;
  /** The first / last sector is only partly covered (read-modify-write). */
  readonly headPartial: boolean;
  readonly tailPartial: boolean;
}
