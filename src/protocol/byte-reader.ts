/**
 * ByteReader: accumulates socket chunks and hands out exact-length messages.
 *
 *   push(chunk) ─► [chunk0 (from `head`)] [chunk1] [chunk2] ... ─► take(n) / skip(n)
 *
 * take(n) returns a VIEW into the first chunk when the n bytes lie inside it (the
 * common case for request headers), and copies only when a message spans chunk
 * boundaries; takeInto() copies into the caller's buffer (WRITE payloads, filled as
 * their bytes arrive).
 *
 * Transient chunks (push(chunk, true)) are views of memory the caller reuses after the
 * current event (server/shared-reads.ts): the caller consumes synchronously, then calls
 * settle(), which copies whatever is still buffered into owned memory. A readExactly()
 * that completes on a transient chunk gets a copy, since its consumer runs later.
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
  /** Some buffered chunk is transient: settle() must copy before the caller returns. */
  private transient = false;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;

  /** Bytes buffered and not yet consumed. */
  get length(): number {
    return this.total;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Buffer `chunk`; `transient`: its memory is reused after this event (see settle()). */
  push(chunk: Buffer, transient = false): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
    if (transient) this.transient = true;
    const w = this.waiter;
    if (w && this.total >= w.n) {
      this.waiter = undefined;
      w.resolve(this.takeKept(w.n));
    }
  }

  /** Copy buffered bytes out of transient chunks, so none of that memory is referenced. */
  settle(): void {
    if (!this.transient) return;
    this.transient = false;
    if (this.total === 0) {
      this.chunks = [];
      this.head = 0;
      return;
    }
    const owned = Buffer.allocUnsafe(this.total);
    let at = 0;
    for (let i = 0; i < this.chunks.length; i++) {
      const c = this.chunks[i]!;
      at += c.copy(owned, at, i === 0 ? this.head : 0);
    }
    this.chunks = [owned];
    this.head = 0;
  }

  /** Copy up to `max` buffered bytes into target at `at`; returns how many were copied. */
  takeInto(target: Buffer, at: number, max: number): number {
    return this.consume(max, (chunk, from, to) => {
      at += chunk.copy(target, at, from, to);
    });
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

  /** Consume exactly n bytes (caller checked `length >= n`): a view, or a copy when they span chunks. */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`take(${n}) with only ${this.total} bytes buffered`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    const avail = first.length - this.head;
    if (n <= avail) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n, first, avail);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    this.takeInto(out, 0, n);
    return out;
  }

  /** Discard up to n bytes; returns how many were discarded. */
  skip(n: number): number {
    return this.consume(n);
  }

  /** Consume up to n bytes, showing each chunk's part to `visit`; returns how many. */
  private consume(n: number, visit?: (chunk: Buffer, from: number, to: number) => void): number {
    let left = Math.min(n, this.total);
    const done = left;
    while (left > 0) {
      const c = this.chunks[0]!;
      const have = c.length - this.head;
      const want = Math.min(have, left);
      visit?.(c, this.head, this.head + want);
      this.advance(want, c, have);
      left -= want;
    }
    return done;
  }

  /** Await exactly n bytes. Rejects with ProtocolError on EOF. One reader at a time. */
  readExactly(n: number): Promise<Buffer> {
    if (this.total >= n) return Promise.resolve(this.takeKept(n));
    if (this.ended) return Promise.reject(this.eofError(n));
    if (this.waiter) return Promise.reject(new Error('ByteReader: concurrent readExactly'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  /** take(n) for a consumer that runs later: a copy while transient chunks are buffered. */
  private takeKept(n: number): Buffer {
    const msg = this.take(n);
    return this.transient ? Buffer.from(msg) : msg;
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
