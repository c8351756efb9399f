/**
 * ByteReader: accumulates socket chunks and hands out exact-length messages.
 *
 *   push(chunk) ─► [chunk0 (from `head`)] [chunk1] [chunk2] ... ─► take(n) / skip(n)
 *
 * take(n) returns a VIEW into the first chunk when the n bytes lie inside it (the
 * common case for request headers and WRITE payloads), and copies only when a
 * message spans chunk boundaries. Views stay valid: chunks are never reused.
 *
 * Two styles of consumer: the handshake awaits readExactly(n) (simple sequential
 * code, low rate); the transmission phase polls `length` and calls take() itself,
 * synchronously, to avoid a promise per request. Pure: no sockets, no logging.
 */
import { ProtocolError } from './nbd-errors.js';

export class ByteReader {
  private chunks: Buffer[] = [];
  /** Consumed bytes of chunks[0]. */
  private head = 0;
  private total = 0;
  private ended = false;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;

  /** Bytes buffered and not yet consumed. */
  get length(): number {
    return this.total;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    const n = this.chunks.length;
    const last = n > 0 ? this.chunks[n - 1]! : undefined;
    if (last && last.buffer === chunk.buffer && last.byteOffset + last.length === chunk.byteOffset) {
      // Adjacent in the same memory (arena reads): extend the view, so a message received
      // in several reads can still be taken without a copy.
      this.chunks[n - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + chunk.length);
    } else {
      this.chunks.push(chunk);
    }
    this.total += chunk.length;
    const w = this.waiter;
    if (w && this.total >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
    }
  }

  /** The peer closed its side: a pending or later readExactly() fails. */
  end(): void {
    this.ended = true;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.reject(this.eofError(w.n));
    }
  }

  /**
   * Consume exactly n bytes (caller checked `length >= n`). `alloc` supplies the buffer
   * when the bytes span chunks and must be copied (e.g. from a buffer pool).
   */
  take(n: number, alloc: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
    if (n > this.total) throw new RangeError(`take(${n}) with only ${this.total} bytes buffered`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    const avail = first.length - this.head;
    if (n <= avail) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n, first, avail);
      return view;
    }
    // Spans chunks: one copy into a fresh (or pooled) buffer.
    const out = alloc(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const have = c.length - this.head;
      const want = Math.min(have, n - filled);
      c.copy(out, filled, this.head, this.head + want);
      filled += want;
      this.advance(want, c, have);
    }
    return out;
  }

  /** Discard up to n bytes; returns how many were discarded. */
  skip(n: number): number {
    let left = Math.min(n, this.total);
    const done = left;
    while (left > 0) {
      const c = this.chunks[0]!;
      const have = c.length - this.head;
      const want = Math.min(have, left);
      this.advance(want, c, have);
      left -= want;
    }
    return done;
  }

  /** Await exactly n bytes. Rejects with ProtocolError on EOF. One reader at a time. */
  readExactly(n: number): Promise<Buffer> {
    if (this.total >= n) return Promise.resolve(this.take(n));
    if (this.ended) return Promise.reject(this.eofError(n));
    if (this.waiter) return Promise.reject(new Error('ByteReader: concurrent readExactly'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  private advance(n: number, chunk: Buffer, avail: number): void {
    this.total -= n;
    if (n === avail) {
      this.chunks.shift();
      this.head = 0;
    } else {
      this.head += n;
    }
    void chunk;
  }

  private eofError(n: number): ProtocolError {
    // EOF exactly at a message boundary is a clean disconnect, not a protocol violation.
    return new ProtocolError(
      this.total === 0 ? 'NBD_ERR_EOF' : 'NBD_ERR_TRUNCATED',
      this.total === 0 ? 'connection closed by peer' : `connection closed mid-message (${this.total} of ${n} bytes)`,
    );
  }
}
