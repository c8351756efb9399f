/**
 * AllocationBitmap: the in-memory copy of an on-disk allocation bitmap, shared by the
 * cow (one bit per 512-byte sector) and add-cow (one bit per cluster) formats.
 *
 * On-disk convention for both formats: bit n lives in byte n >> 3 with mask
 * 1 << (n & 7) — least significant bit first, byte-wise (never native words, so the
 * layout is independent of host endianness; docs/cow-format.md#c14).
 *
 * The bitmap tracks which of its bytes changed since the last persist, at "page"
 * granularity (pageSize bytes of bitmap), so FLUSH writes only dirty pages.
 * Bits are only ever set, never cleared, by the formats (cow: "bits are never cleared").
 *
 * Concurrency: methods are synchronous and never await, so on Node's single thread a
 * setRange() is atomic with respect to other requests. Callers still serialise the
 * *persisting* of pages (an async mutex in the format driver) so a page is never
 * written twice concurrently with stale contents.
 */
export class AllocationBitmap {
  /** Raw bitmap bytes exactly as on disk (bitCount bits, tail bits zero). */
  readonly bytes: Buffer;
  private readonly dirty = new Set<number>();

  /**
   * @param bitCount number of meaningful bits; bits >= bitCount are ignored on read and never set.
   * @param byteLength bytes of bitmap storage (>= ceil(bitCount / 8); the v1/v2 cow rounding bug
   *   can make it smaller, in which case bits past byteLength*8 read as unset and cannot be set).
   * @param pageSize dirty-tracking granularity in bytes.
   */
  constructor(
    readonly bitCount: number,
    byteLength: number,
    readonly pageSize = 4096,
    initial?: Buffer,
  ) {
    this.bytes = Buffer.alloc(byteLength);
    if (initial) initial.copy(this.bytes, 0, 0, Math.min(initial.length, byteLength));
  }

  /** Number of bits that can actually be stored (min of bitCount and byteLength*8). */
  get usableBits(): number {
    return Math.min(this.bitCount, this.bytes.length * 8);
  }

  get(bit: number): boolean {
    if (bit < 0 || bit >= this.usableBits) return false;
    return (this.bytes[bit >> 3]! & (1 << (bit & 7))) !== 0;
  }

  /**
   * Length of the run of bits equal to get(start), starting at `start`, at most `max` long.
   * Scans whole 0x00/0xff bytes at once.
   */
  runLength(start: number, max: number): number {
    const limit = Math.min(start + max, this.bitCount);
    if (start >= limit) return 0;
    const value = this.get(start);
    const fullByte = value ? 0xff : 0x00;
    let bit = start;
    while (bit < limit) {
      if ((bit & 7) === 0 && bit + 8 <= limit && bit + 8 <= this.usableBits) {
        if (this.bytes[bit >> 3] === fullByte) {
          bit += 8;
          continue;
        }
      }
      if (this.get(bit) !== value) break;
      bit++;
    }
    return bit - start;
  }

  /** True if every bit in [start, start+count) is set. */
  allSet(start: number, count: number): boolean {
    return count <= 0 || (this.get(start) && this.runLength(start, count) >= count);
  }

  /** Set bits [start, start+count); returns true if any bit changed. Marks pages dirty. */
  setRange(start: number, count: number): boolean {
    const end = Math.min(start + count, this.usableBits);
    const bytes = this.bytes;
    let changed = false;
    // Last page marked dirty by this call: a 1 MiB cow write touches 256 bitmap bytes of
    // one page, so mark it once instead of once per byte.
    let lastPage = -1;
    let bit = Math.max(0, start);
    while (bit < end) {
      const i = bit >> 3;
      if ((bit & 7) === 0 && bit + 8 <= end) {
        if (bytes[i] !== 0xff) {
          bytes[i] = 0xff;
          changed = true;
          const page = Math.floor(i / this.pageSize);
          if (page !== lastPage) {
            this.dirty.add(page);
            lastPage = page;
          }
        }
        bit += 8;
        continue;
      }
      const mask = 1 << (bit & 7);
      if ((bytes[i]! & mask) === 0) {
        bytes[i] = bytes[i]! | mask;
        changed = true;
        const page = Math.floor(i / this.pageSize);
        if (page !== lastPage) {
          this.dirty.add(page);
          lastPage = page;
        }
      }
      bit++;
    }
    return changed;
  }

  /** Count of set bits (for `info`: allocated bytes). */
  countSet(): number {
    let n = 0;
    const usable = this.usableBits;
    for (let i = 0; i < this.bytes.length && i * 8 < usable; i++) {
      let b = this.bytes[i]!;
      if (i * 8 + 8 > usable) b &= (1 << (usable - i * 8)) - 1;
      while (b) {
        b &= b - 1;
        n++;
      }
    }
    return n;
  }

  get hasDirty(): boolean {
    return this.dirty.size > 0;
  }

  /**
   * Take the dirty pages (sorted page indexes) and clear the dirty set. The caller writes
   * `pageBytes(page)` for each; on failure it must call `markPagesDirty` to retry later.
   */
  takeDirtyPages(): number[] {
    const pages = [...this.dirty].sort((a, b) => a - b);
    this.dirty.clear();
    return pages;
  }

  markPagesDirty(pages: readonly number[]): void {
    for (const p of pages) this.dirty.add(p);
  }

  /** Byte offset within the bitmap and the bytes of one dirty-tracking page. */
  pageBytes(page: number): { offset: number; data: Buffer } {
    const offset = page * this.pageSize;
    return { offset, data: this.bytes.subarray(offset, Math.min(offset + this.pageSize, this.bytes.length)) };
  }
}
