/**
 * A passive decoder of the client→server half of one NBD connection, for assertions on what
 * the Linux kernel client really sends (docs/kernel-client.md lists what it was measured to
 * send). Fed the raw bytes in order; never changes them.
 *
 * Phases (docs/protocol.md): 4 bytes of client flags, then option haggling (IHAVEOPT header,
 * option, length, data) until NBD_OPT_GO or NBD_OPT_EXPORT_NAME, then 28-byte requests (a
 * WRITE is followed by its payload). NBD_OPT_STARTTLS makes the rest opaque: the tap then
 * records only that TLS was started, and stops decoding.
 */

export const NBD_CMD_NAMES = ['READ', 'WRITE', 'DISC', 'FLUSH', 'TRIM', 'CACHE', 'WRITE_ZEROES', 'BLOCK_STATUS', 'RESIZE'] as const;
const REQUEST_MAGIC = 0x25609513;
const OPT_EXPORT_NAME = 1;
const OPT_STARTTLS = 5;
const OPT_GO = 7;
const CMD_FLAG_FUA = 1;

export interface WireSummary {
  clientFlags?: number;
  /** Option codes in the order sent. */
  options: number[];
  /** Requests by command name (READ, WRITE, ...; unknown types as TYPE<n>). */
  counts: Record<string, number>;
  /** Requests carrying NBD_CMD_FLAG_FUA. */
  fua: number;
  /** Largest READ/WRITE length seen. */
  maxIoLength: number;
  /** Total TRIM length (bytes). */
  trimmedBytes: number;
  /** Largest single TRIM (bytes). */
  maxTrimLength: number;
  tls: boolean;
  /** Set when the stream stopped making sense (bad magic): decoding stopped there. */
  error?: string;
}

export class NbdWireTap {
  readonly summary: WireSummary = { options: [], counts: {}, fua: 0, maxIoLength: 0, trimmedBytes: 0, maxTrimLength: 0, tls: false };
  private buf: Buffer = Buffer.alloc(0);
  private phase: 'flags' | 'options' | 'requests' | 'opaque' = 'flags';
  /** WRITE payload bytes still to skip. */
  private skip = 0;

  feed(chunk: Buffer): void {
    if (this.phase === 'opaque') return;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, this.buf.length);
        this.skip -= n;
        this.buf = this.buf.subarray(n);
        if (this.skip > 0) return;
      }
      if (!this.step()) return;
    }
  }

  /** Decode one unit if the buffer holds it; false when more bytes are needed. */
  private step(): boolean {
    const b = this.buf;
    switch (this.phase) {
      case 'flags':
        if (b.length < 4) return false;
        this.summary.clientFlags = b.readUInt32BE(0);
        this.buf = b.subarray(4);
        this.phase = 'options';
        return true;
      case 'options': {
        if (b.length < 16) return false;
        const len = b.readUInt32BE(12);
        if (b.length < 16 + len) return false;
        const opt = b.readUInt32BE(8);
        this.summary.options.push(opt);
        this.buf = b.subarray(16 + len);
        if (opt === OPT_STARTTLS) {
          this.summary.tls = true;
          this.phase = 'opaque';
          return false;
        }
        if (opt === OPT_GO || opt === OPT_EXPORT_NAME) this.phase = 'requests';
        return true;
      }
      case 'requests': {
        if (b.length < 28) return false;
        const magic = b.readUInt32BE(0);
        if (magic !== REQUEST_MAGIC) {
          this.summary.error = `bad request magic 0x${magic.toString(16)}`;
          this.phase = 'opaque';
          return false;
        }
        const flags = b.readUInt16BE(4);
        const type = b.readUInt16BE(6);
        const length = b.readUInt32BE(24);
        const name = NBD_CMD_NAMES[type] ?? `TYPE${type}`;
        this.summary.counts[name] = (this.summary.counts[name] ?? 0) + 1;
        if (flags & CMD_FLAG_FUA) this.summary.fua++;
        if (type <= 1) this.summary.maxIoLength = Math.max(this.summary.maxIoLength, length);
        if (type === 4) {
          this.summary.trimmedBytes += length;
          this.summary.maxTrimLength = Math.max(this.summary.maxTrimLength, length);
        }
        this.buf = b.subarray(28);
        if (type === 1) this.skip = length;
        return true;
      }
      default:
        return false;
    }
  }
}
