/**
 * Per-byte model of what a crash may leave (the crash campaign's oracle).
 *
 * Requests touching the same byte are never in flight together (the workload picks
 * disjoint ranges), so every byte sees a sequence of requests ordered by completion.
 * A request is DURABLE once its FUA reply arrived, or once a FLUSH (on any connection)
 * that was sent after its reply has itself been answered. After kill -9, byte b must hold:
 *   - the value of the last durable request touching it (or the state before the run),
 *   - or the value of any later request touching it (acknowledged or not, even failed),
 * never anything else. TRIM makes a byte "anything" (NBD: unspecified until rewritten).
 */
export type OpKind = 'write' | 'zero' | 'trim';

export interface Op {
  readonly index: number;
  readonly kind: OpKind;
  readonly offset: number;
  readonly length: number;
  readonly fua: boolean;
  acked: boolean;
  ackSeq: number;
  durable: boolean;
}

export interface Verdict {
  violations: number;
  firstViolation?: string;
  /** Bytes whose last durable request was checked exactly. */
  durableBytes: number;
  checkedBytes: number;
}

/** The byte a write puts at absolute offset b (deterministic, differs between writes). */
export function writeByte(opIndex: number, b: number): number {
  return (Math.imul(opIndex + 1, 0x9e3779b1) ^ Math.imul(b, 0x85ebca6b) ^ (b >>> 13)) >>> 24;
}

export class ByteModel {
  readonly ops: Op[] = [];
  private seq = 0;
  private readonly inFlight = new Set<Op>();

  constructor(readonly before: Buffer) {}

  get size(): number {
    return this.before.length;
  }

  /** Would [offset, offset+length) overlap a request in flight? */
  busy(offset: number, length: number): boolean {
    for (const op of this.inFlight) if (offset < op.offset + op.length && op.offset < offset + length) return true;
    return false;
  }

  issue(kind: OpKind, offset: number, length: number, fua: boolean): Op {
    const op: Op = { index: this.ops.length, kind, offset, length, fua, acked: false, ackSeq: -1, durable: false };
    this.ops.push(op);
    this.inFlight.add(op);
    return op;
  }

  payload(op: Op): Buffer {
    const buf = Buffer.allocUnsafe(op.length);
    for (let i = 0; i < op.length; i++) buf[i] = writeByte(op.index, op.offset + i);
    return buf;
  }

  /** Reply received (error !== 0: the request may or may not have happened, never durable). */
  acked(op: Op, error: number): void {
    this.inFlight.delete(op);
    if (error !== 0) return;
    op.acked = true;
    op.ackSeq = this.seq++;
    if (op.fua) op.durable = true;
  }

  /** A FLUSH is being sent: returns its token. */
  flushSent(): number {
    return this.seq++;
  }

  /** That FLUSH was answered OK: everything acknowledged before it was sent is durable. */
  flushAcked(token: number): void {
    for (const op of this.ops) if (op.acked && op.ackSeq < token) op.durable = true;
  }

  verify(actual: Buffer): Verdict {
    const size = this.size;
    const expected = Buffer.from(this.before);
    const anything = new Uint8Array(size);
    const lastDurable = new Int32Array(size).fill(-1);
    for (const op of this.ops) {
      if (!op.durable) continue;
      for (let b = op.offset; b < op.offset + op.length; b++) {
        lastDurable[b] = op.index;
        if (op.kind === 'trim') anything[b] = 1;
        else {
          anything[b] = 0;
          expected[b] = op.kind === 'zero' ? 0 : writeByte(op.index, b);
        }
      }
    }
    const suspect = new Uint8Array(size);
    let suspects = 0;
    for (let b = 0; b < size; b++) {
      if (!anything[b] && actual[b] !== expected[b]) {
        suspect[b] = 1;
        suspects++;
      }
    }
    // A mismatch is fine if a request later than the byte's last durable one explains it.
    if (suspects > 0) {
      for (const op of this.ops) {
        for (let b = op.offset; b < op.offset + op.length; b++) {
          if (!suspect[b] || op.index <= lastDurable[b]!) continue;
          if (op.kind === 'trim' || actual[b] === (op.kind === 'zero' ? 0 : writeByte(op.index, b))) {
            suspect[b] = 0;
            suspects--;
          }
        }
      }
    }
    let durableBytes = 0;
    for (let b = 0; b < size; b++) if (lastDurable[b]! >= 0) durableBytes++;
    const verdict: Verdict = { violations: suspects, durableBytes, checkedBytes: size };
    if (suspects > 0) {
      const b = suspect.indexOf(1);
      verdict.firstViolation = `byte ${b}: 0x${actual[b]!.toString(16)}, expected 0x${expected[b]!.toString(16)} (last durable request #${lastDurable[b]})`;
    }
    return verdict;
  }
}
