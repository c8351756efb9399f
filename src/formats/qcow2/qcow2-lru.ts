/**
 * A bounded, byte-budgeted LRU of immutable buffers keyed by number, with one load per key
 * in flight: the qcow2 reader's L2-slice cache and its decompressed-cluster cache.
 *
 * Why bounded by bytes: memory must not grow with the image (a 1 TiB image has 128 MiB of
 * L2 tables at 64 KiB clusters); the budget decides how much of it stays hot. Why one load
 * in flight per key: 32 concurrent reads of one cold L2 slice must cost one pread, not 32.
 * Entries are never mutated (the image is read-only while served), so a cached buffer can
 * be handed out without copying.
 */
export class BoundedLru {
  private readonly entries = new Map<number, Buffer>();
  private readonly loading = new Map<number, Promise<Buffer>>();
  private bytes = 0;

  constructor(
    /** Sum of cached buffer lengths this cache keeps at most. */
    readonly maxBytes: number,
  ) {}

  /** The cached buffer for `key` if there is one now (made the most recent), without loading. */
  peek(key: number): Buffer | undefined {
    const hit = this.entries.get(key);
    if (hit) {
      this.entries.delete(key);
      this.entries.set(key, hit);
    }
    return hit;
  }

  /** The cached buffer for `key`, or the result of `load()` (cached when it fits). */
  get(key: number, load: () => Promise<Buffer>): Promise<Buffer> {
    const hit = this.entries.get(key);
    if (hit) {
      // Map keeps insertion order: re-inserting moves the key to the young end.
      this.entries.delete(key);
      this.entries.set(key, hit);
      return Promise.resolve(hit);
    }
    const pending = this.loading.get(key);
    if (pending) return pending;
    const p = load().then(
      (buf) => {
        this.loading.delete(key);
        this.insert(key, buf);
        return buf;
      },
      (err: unknown) => {
        this.loading.delete(key);
        throw err;
      },
    );
    this.loading.set(key, p);
    return p;
  }

  /** Bytes currently held (for tests and memory reports). */
  get size(): number {
    return this.bytes;
  }

  clear(): void {
    this.entries.clear();
    this.bytes = 0;
  }

  private insert(key: number, buf: Buffer): void {
    if (buf.length > this.maxBytes || this.entries.has(key)) return;
    this.entries.set(key, buf);
    this.bytes += buf.length;
    for (const [k, v] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= v.length;
    }
  }
}
