/**
 * Independent NBD fixture encoder/decoder for tests, written with plain Buffer writes
 * straight from the spec — it deliberately imports NOTHING from src/protocol, so a bug
 * in the production codec cannot be mirrored here.
 *
 * Also a tiny raw NBD client over node:net (RawClient), for tests that must send
 * what no well-behaved client library would (unknown commands, bad magic, garbage).
 */
import net from 'node:net';

export const MAGIC = {
  NBDMAGIC: Buffer.from('NBDMAGIC', 'latin1'),
  IHAVEOPT: Buffer.from('IHAVEOPT', 'latin1'),
  OPT_REPLY: Buffer.from('0003e889045565a9', 'hex'),
  REQUEST: Buffer.from('25609513', 'hex'),
  SIMPLE: Buffer.from('67446698', 'hex'),
  STRUCTURED: Buffer.from('668e33ef', 'hex'),
};

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META: 9, SET_META: 10 };
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
};
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95, ESHUTDOWN: 108 };

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}
function u64(v: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
}
export { u16, u32, u64 };

/** Client option: IHAVEOPT, u32 option, u32 length, data. */
export function optionRequest(option: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): Buffer {
  return Buffer.concat([MAGIC.IHAVEOPT, u32(option), u32(lengthOverride ?? data.length), data]);
}

/** INFO/GO data: u32 namelen, name, u16 n, n × u16. */
export function infoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(n.length), n, u16(infos.length), ...infos.map(u16)]);
}

/** LIST/SET_META_CONTEXT data. */
export function metaData(name: string, queries: string[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(n.length), n, u32(queries.length), ...queries.flatMap((q) => [u32(Buffer.byteLength(q)), Buffer.from(q)])]);
}

/** 28-byte request header (+ payload). */
export function request(type: number, opts: { flags?: number; cookie?: bigint; offset?: bigint | number; length?: number; payload?: Buffer } = {}): Buffer {
  const header = Buffer.concat([
    MAGIC.REQUEST,
    u16(opts.flags ?? 0),
    u16(type),
    u64(opts.cookie ?? 1n),
    u64(opts.offset ?? 0),
    u32(opts.length ?? opts.payload?.length ?? 0),
  ]);
  return opts.payload ? Buffer.concat([header, opts.payload]) : header;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

/** Minimal promise-based raw client. */
export class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private ended = false;
  readonly socket: net.Socket;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  /** Wrap an already-connected socket (e.g. one opened with allowHalfOpen). */
  static wrap(socket: net.Socket): RawClient {
    return new RawClient(socket);
  }

  /** `localAddress` (e.g. 127.0.0.2) makes the connection come from another loopback address. */
  static connect(target: { port: number; localAddress?: string } | { path: string }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = 'path' in target ? net.connect(target.path) : net.connect({ port: target.port, host: '127.0.0.1', localAddress: target.localAddress });
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection closed (wanted ${n} bytes, have ${this.buf.length})`);
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return Buffer.from(out);
  }

  /** Resolves true when the server closed the connection within timeoutMs. */
  async closedByServer(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
    return this.ended;
  }

  /** Greeting + client flags. Returns the handshake flags. */
  async greet(clientFlags = 3): Promise<number> {
    const g = await this.read(18);
    if (!g.subarray(0, 8).equals(MAGIC.NBDMAGIC) || !g.subarray(8, 16).equals(MAGIC.IHAVEOPT)) throw new Error('bad greeting');
    this.write(u32(clientFlags));
    return g.readUInt16BE(16);
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (!h.subarray(0, 8).equals(MAGIC.OPT_REPLY)) throw new Error(`bad option reply magic ${h.subarray(0, 8).toString('hex')}`);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) };
  }

  /** Read option replies until a final one (anything but SERVER/INFO/META_CONTEXT). */
  async readOptionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type !== REP.SERVER && r.type !== REP.INFO && r.type !== REP.META_CONTEXT) return out;
    }
  }

  /** Full handshake via GO. Returns size and transmission flags. */
  async handshake(opts: { name?: string; structured?: boolean; meta?: string[] } = {}): Promise<{ size: bigint; flags: number }> {
    await this.greet();
    if (opts.structured || opts.meta) {
      this.write(optionRequest(OPT.STRUCTURED_REPLY));
      const r = await this.readOptionReply();
      if (r.type !== REP.ACK) throw new Error('STRUCTURED_REPLY refused');
    }
    if (opts.meta) {
      this.write(optionRequest(OPT.SET_META, metaData(opts.name ?? '', opts.meta)));
      await this.readOptionReplies();
    }
    this.write(optionRequest(OPT.GO, infoData(opts.name ?? '')));
    const replies = await this.readOptionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== REP.ACK) throw new Error(`GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const exp = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!;
    return { size: exp.data.readBigUInt64BE(2), flags: exp.data.readUInt16BE(10) };
  }

  async readSimpleReply(dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (!h.subarray(0, 4).equals(MAGIC.SIMPLE)) throw new Error(`expected simple reply, got magic ${h.subarray(0, 4).toString('hex')}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0);
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  async readChunk(): Promise<Chunk> {
    const h = await this.read(20);
    if (!h.subarray(0, 4).equals(MAGIC.STRUCTURED)) throw new Error(`expected chunk, got magic ${h.subarray(0, 4).toString('hex')}`);
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload: await this.read(h.readUInt32BE(16)) };
  }

  /** Chunks of one reply up to and including DONE. */
  async readChunks(): Promise<Chunk[]> {
    const out: Chunk[] = [];
    for (;;) {
      const c = await this.readChunk();
      out.push(c);
      if (c.flags & 1) return out;
    }
  }

  /** Either a simple reply or a structured reply; returns the error code (0 = ok). */
  async readAnyReplyError(): Promise<{ error: number; cookie: bigint }> {
    const peek = await this.read(4);
    this.buf = Buffer.concat([peek, this.buf]);
    if (peek.equals(MAGIC.SIMPLE)) {
      const r = await this.readSimpleReply();
      return { error: r.error, cookie: r.cookie };
    }
    const chunks = await this.readChunks();
    const err = chunks.find((c) => c.type & 0x8000);
    return { error: err ? err.payload.readUInt32BE(0) : 0, cookie: chunks[0]!.cookie };
  }

  close(): void {
    this.socket.destroy();
  }
}
