/**
 * AllocationBitmap: an on-disk allocation bitmap, held in memory page by page on demand.
 * Shared by the cow (one bit per 512-byte sector) and add-cow (one bit per cluster) formats.
 *
 * On-disk convention for both formats: bit n lives in byte n >> 3 with mask
 * 1 << (n & 7) — least significant bit first, byte-wise (never native words, so the
 * layout is independent of host endianness; docs/cow-format.md).
 *
 * Memory is flat in disk size: a 1 TiB cow overlay has a 256 MiB bitmap, nearly all of it
 * zero and, in a fresh overlay, a hole in the file. Only pages (pageSize bytes of bitmap)
 * holding a set bit are kept, and clean ones only up to a budget:
 *   - a page never loaded reads as zero without I/O when the source says its bytes are a
 *     hole (dataRanges, from SEEK_DATA at open) — otherwise it is read once, synchronously
 *     (a 4 KiB pread, from the page cache in practice), and dropped again if it is all zero;
 *   - dirty pages and pages being persisted are pinned; clean pages beyond the budget are
 *     evicted, oldest first, and re-read from the file when needed again. A page is pinned
 *     from takeDirtyPages() until pagesPersisted(): evicting it earlier could re-read the
 *     file's OLD bytes while the new ones are still on their way and lose bits.
 * get()/runLength()/setRange() stay synchronous, which is what makes a setRange() atomic with
 * respect to other requests on Node's single thread; the price is a synchronous read when a
 * request first touches a page (once per 16 MiB of cow disk per page budget cycle).
 *
 * Dirty tracking is per page, so FLUSH writes only the pages that changed. Bits are only
 * ever set, never cleared, by the formats. Callers serialise the persisting of pages (an
 * async mutex in the driver) so a page is never written twice concurrently out of order.
 */
import { countBits, isZero, scanRun, setBits } from './bitmap-bits.js';

/** Where the bitmap's bytes live, for loading pages on demand. */
export { fileBitmapSource } from './bitmap-bits.js';

export interface BitmapSource {
  /** Read bitmap bytes [offset, offset + target.length) synchronously; past the file's end: zeros. */
  read(offset: number, target: Buffer): void;
  /**
   * Sorted [start, end) byte ranges of the bitmap that may hold non-zero bytes; any other
   * byte is zero (a hole). Undefined: every byte may.
   */
  readonly dataRanges?: ReadonlyArray<readonly [number, number]>;
}

export interface AllocationBitmapOptions {
  /** Bits >= clearFrom are cleared whenever a page is loaded (garbage tail bits). */
  readonly clearFrom?: number;
  /** Bytes of clean pages kept in memory (default 16 MiB). Dirty pages are never evicted. */
  readonly cleanBudget?: number;
}

const DEFAULT_CLEAN_BUDGET = 16 * 1024 * 1024;
/** Reads of pages whose contents are unknown cover this many bytes at once. */
const CHUNK = 64 * 1024;
const ZERO = 0;
const UNKNOWN = 1;
const DATA = 2;

interface Chunk {
  covers(page: number): boolean;
  /** The page's bytes inside the chunk read (valid until the next read), or undefined if zero. */
  page(page: number): Buffer | undefined;
}

export class AllocationBitmap {
  /** Bytes of bitmap storage. */
  readonly byteLength: number;
  /** Number of bits that can actually be stored (min of bitCount and byteLength*8). */
  readonly usableBits: number;
  private readonly pageBits: number;
  private readonly pageCount: number;
  private readonly pages = new Map<number, Buffer>();
  private readonly dirty = new Set<number>();
  /** Pages taken by takeDirtyPages() and not yet persisted (count of persists in flight). */
  private readonly inflight = new Map<number, number>();
  private readonly source: BitmapSource | undefined;
  /** Per page: ZERO, UNKNOWN (may hold non-zero bytes) or DATA (does), only with a source. */
  private readonly onDisk: Uint8Array | undefined;
  private readonly clearFrom: number;
  private readonly maxClean: number;
  private loads = 0;
  private scratch: Buffer | undefined;
  private chunkScratch: Buffer | undefined;
  /** Buffers of evicted pages, reused for the next loads (no garbage per page churned). */
  private readonly free: Buffer[] = [];

  /**
   * @param bitCount number of meaningful bits; bits >= bitCount are ignored on read and never set.
   * @param byteLength bytes of bitmap storage (>= ceil(bitCount / 8); the v1/v2 cow rounding bug
   *   can make it smaller, in which case bits past byteLength*8 read as unset and cannot be set).
   * @param pageSize granularity of loading, eviction and dirty tracking, in bytes.
   * @param initial the whole bitmap's bytes (copied), or a source to load pages from on demand;
   *   neither: all zero.
   */
  constructor(
    readonly bitCount: number,
    byteLength: number,
    readonly pageSize = 4096,
    initial?: Buffer | BitmapSource,
    options: AllocationBitmapOptions = {},
  ) {
    this.byteLength = byteLength;
    this.usableBits = Math.min(bitCount, byteLength * 8);
    this.pageBits = pageSize * 8;
    this.pageCount = Math.ceil(byteLength / pageSize);
    this.clearFrom = Math.min(options.clearFrom ?? Infinity, byteLength * 8);
    this.maxClean = Math.max(1, Math.floor((options.cleanBudget ?? DEFAULT_CLEAN_BUDGET) / pageSize));
    if (Buffer.isBuffer(initial)) {
      for (let p = 0; p < this.pageCount; p++) {
        const start = p * pageSize;
        const page = Buffer.alloc(this.pageLength(p));
        initial.copy(page, 0, Math.min(start, initial.length), Math.min(start + page.length, initial.length));
        this.clearTail(p, page);
        if (!isZero(page)) this.pages.set(p, page);
      }
    } else if (initial) {
      this.source = initial;
      this.onDisk = new Uint8Array(this.pageCount); // ZERO
      if (!initial.dataRanges) this.onDisk.fill(UNKNOWN);
      else {
        for (const [start, end] of initial.dataRanges) {
          if (end <= start) continue;
          this.onDisk.fill(UNKNOWN, Math.floor(start / pageSize), Math.min(this.pageCount, Math.ceil(end / pageSize)));
        }
      }
    }
  }

  /** Pages currently held in memory (dirty, being persisted, or clean within the budget). */
  get residentPages(): number {
    return this.pages.size;
  }

  /** Pages read from the source so far (a measure of I/O, for tests and diagnostics). */
  get pageLoads(): number {
    return this.loads;
  }

  get(bit: number): boolean {
    if (bit < 0 || bit >= this.usableBits) return false;
    const p = Math.floor(bit / this.pageBits);
    const page = this.page(p);
    if (page === undefined) return false;
    const i = bit - p * this.pageBits;
    return (page[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  /**
   * Length of the run of bits equal to get(start), starting at `start`, at most `max` long.
   * Zero pages that were never loaded are skipped whole; bytes of 0x00/0xff at once.
   */
  runLength(start: number, max: number): number {
    const limit = Math.min(start + max, this.bitCount);
    if (start >= limit) return 0;
    const value = this.get(start);
    let bit = start;
    while (bit < limit) {
      if (bit >= this.usableBits) {
        // Bits without storage read as unset.
        if (!value) bit = limit;
        break;
      }
      const p = Math.floor(bit / this.pageBits);
      const base = p * this.pageBits;
      const end = Math.min(base + this.pageBits, limit, this.usableBits);
      const page = this.page(p);
      if (page === undefined) {
        if (value) break;
        bit = end;
        continue;
      }
      bit = base + scanRun(page, bit - base, end - base, value);
      if (bit < end) break;
    }
    return Math.min(bit, limit) - start;
  }

  /** True if every bit in [start, start+count) is set. */
  allSet(start: number, count: number): boolean {
    return count <= 0 || (this.get(start) && this.runLength(start, count) >= count);
  }

  /** Set bits [start, start+count); returns true if any bit changed. Marks pages dirty. */
  setRange(start: number, count: number): boolean {
    const end = Math.min(start + count, this.usableBits);
    let changed = false;
    let bit = Math.max(0, start);
    while (bit < end) {
      const p = Math.floor(bit / this.pageBits);
      const base = p * this.pageBits;
      const pageEnd = Math.min(base + this.pageBits, end);
      let page = this.page(p);
      if (page === undefined) {
        page = Buffer.alloc(this.pageLength(p));
        this.insert(p, page);
      }
      if (setBits(page, bit - base, pageEnd - base)) {
        changed = true;
        this.dirty.add(p);
      }
      bit = pageEnd;
    }
    return changed;
  }

  /** Count of set bits (for `info`: allocated bytes). Streams pages that are not resident. */
  countSet(from = 0, to = this.usableBits): number {
    to = Math.min(to, this.usableBits);
    let n = 0;
    let chunk: Chunk | undefined;
    for (let bit = Math.max(0, from); bit < to; ) {
      const p = Math.floor(bit / this.pageBits);
      const base = p * this.pageBits;
      const end = Math.min(base + this.pageBits, to);
      const got = this.peek(p, chunk); // streamed: counted, not kept
      chunk = got.chunk;
      if (got.bytes !== undefined) n += countBits(got.bytes, bit - base, end - base);
      bit = end;
    }
    return n;
  }

  /** The whole bitmap as bytes (for small bitmaps: add-cow inspection, tests). */
  copyBytes(): Buffer {
    const out = Buffer.alloc(this.byteLength);
    let chunk: Chunk | undefined;
    for (let p = 0; p < this.pageCount; p++) {
      const got = this.peek(p, chunk);
      chunk = got.chunk;
      got.bytes?.copy(out, p * this.pageSize);
    }
    return out;
  }

  get hasDirty(): boolean {
    return this.dirty.size > 0;
  }

  /**
   * Take the dirty pages (sorted page indexes) and clear the dirty set. The caller writes
   * `pageBytes(page)` for each, then calls `pagesPersisted(pages)`; on failure it calls
   * `markPagesDirty(pages)` to retry later. Until one of the two, the pages stay pinned.
   */
  takeDirtyPages(): number[] {
    const pages = [...this.dirty].sort((a, b) => a - b);
    this.dirty.clear();
    for (const p of pages) {
      this.inflight.set(p, (this.inflight.get(p) ?? 0) + 1);
      if (this.onDisk) this.onDisk[p] = DATA; // from now on the file holds set bits there
    }
    return pages;
  }

  /** The pages' bytes reached the file: they may be evicted again. */
  pagesPersisted(pages: readonly number[]): void {
    for (const p of pages) this.unpin(p);
    this.evictIfOverBudget(-1);
  }

  markPagesDirty(pages: readonly number[]): void {
    for (const p of pages) {
      this.dirty.add(p);
      this.unpin(p);
    }
  }

  /** Byte offset within the bitmap and the bytes of one page. */
  pageBytes(page: number): { offset: number; data: Buffer } {
    return { offset: page * this.pageSize, data: this.page(page) ?? Buffer.alloc(this.pageLength(page)) };
  }

  // ---- pages -------------------------------------------------------------------------

  private pageLength(p: number): number {
    return Math.min(this.pageSize, this.byteLength - p * this.pageSize);
  }

  /** The resident page, loading it if the source may hold bits there; undefined: all zero. */
  private page(p: number): Buffer | undefined {
    const page = this.pages.get(p);
    if (page !== undefined || this.onDisk === undefined || this.onDisk[p] === ZERO) return page;
    const bytes = this.onDisk[p] === DATA ? this.readOne(p) : this.readChunk(p).page(p);
    if (bytes === undefined) return undefined;
    const kept = bytes.length === this.pageSize ? (this.free.pop() ?? Buffer.allocUnsafe(this.pageSize)) : Buffer.allocUnsafe(bytes.length);
    bytes.copy(kept);
    this.insert(p, kept);
    return kept;
  }

  /** Bytes of a page (resident, or read into scratch and valid until the next read); undefined: zero. */
  private peek(p: number, chunk: Chunk | undefined): { bytes: Buffer | undefined; chunk: Chunk | undefined } {
    const page = this.pages.get(p);
    if (page !== undefined || this.onDisk === undefined || this.onDisk[p] === ZERO) return { bytes: page, chunk };
    if (chunk === undefined || !chunk.covers(p)) chunk = this.readChunk(p);
    return { bytes: chunk.page(p), chunk };
  }

  /** Read a page known to hold data (one small read). */
  private readOne(p: number): Buffer | undefined {
    const scratch = (this.scratch ??= Buffer.alloc(this.pageSize)).subarray(0, this.pageLength(p));
    scratch.fill(0);
    this.source!.read(p * this.pageSize, scratch);
    this.loads++;
    this.clearTail(p, scratch);
    return isZero(scratch) ? undefined : scratch;
  }

  /**
   * Read the CHUNK-sized group of pages around p in one read and learn, for each page not in
   * memory, whether it is zero (never read again) or holds data. Unknown pages are mostly
   * holes, so one 64 KiB read settles 64 pages of 1 KiB for one syscall.
   */
  private readChunk(p: number): Chunk {
    const per = Math.max(1, Math.floor(CHUNK / this.pageSize));
    const first = p - (p % per);
    const last = Math.min(this.pageCount, first + per);
    const start = first * this.pageSize;
    const buf = (this.chunkScratch ??= Buffer.alloc(per * this.pageSize)).subarray(0, Math.min(this.byteLength, last * this.pageSize) - start);
    buf.fill(0);
    this.source!.read(start, buf);
    this.loads++;
    const zero: boolean[] = [];
    for (let q = first; q < last; q++) {
      const bytes = buf.subarray((q - first) * this.pageSize, (q - first) * this.pageSize + this.pageLength(q));
      this.clearTail(q, bytes);
      zero.push(isZero(bytes));
      // Only pages not in memory: a resident page's file bytes may be older than memory.
      if (!this.pages.has(q) && this.onDisk![q] !== ZERO) this.onDisk![q] = zero[q - first] ? ZERO : DATA;
    }
    return {
      covers: (q) => q >= first && q < last,
      page: (q) => (zero[q - first] ? undefined : buf.subarray((q - first) * this.pageSize, (q - first) * this.pageSize + this.pageLength(q))),
    };
  }

  private clearTail(p: number, page: Buffer): void {
    const base = p * this.pageBits;
    if (this.clearFrom >= base + page.length * 8) return;
    for (let bit = Math.max(this.clearFrom, base) - base; bit < page.length * 8; bit++) {
      if ((bit & 7) === 0) {
        page.fill(0, bit >> 3);
        return;
      }
      page[bit >> 3] = page[bit >> 3]! & ~(1 << (bit & 7));
    }
  }

  private insert(p: number, page: Buffer): void {
    this.pages.set(p, page);
    this.evictIfOverBudget(p);
  }

  private unpin(p: number): void {
    const n = this.inflight.get(p);
    if (n === undefined) return;
    if (n <= 1) this.inflight.delete(p);
    else this.inflight.set(p, n - 1);
  }

  /** Drop clean pages, oldest first, down to 7/8 of the budget (batches amortise the scan). */
  private evictIfOverBudget(keep: number): void {
    if (this.source === undefined) return; // no file to re-read from: everything stays
    if (this.pages.size - this.dirty.size - this.inflight.size <= this.maxClean) return;
    let excess = this.pages.size - this.dirty.size - this.inflight.size - (this.maxClean - (this.maxClean >> 3));
    for (const p of this.pages.keys()) {
      if (excess <= 0) break;
      if (p === keep || this.dirty.has(p) || this.inflight.has(p)) continue;
      const page = this.pages.get(p)!;
      this.pages.delete(p);
      if (page.length === this.pageSize && this.free.length < 64) this.free.push(page);
      excess--;
    }
  }
}
