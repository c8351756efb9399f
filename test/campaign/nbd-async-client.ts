/**
 * A pipelining NBD client for the campaign: fixed-newstyle handshake with GO, simple
 * replies, many requests in flight, replies matched by cookie. Written from the spec
 * like test/helpers/nbd-fixtures.ts (which it reuses for encoding), independent of src/.
 */
import net from 'node:net';
import { CMD, OPT, REP, infoData, optionRequest, request } from '../helpers/nbd-fixtures.js';

export interface Reply {
  error: number;
}

export class AsyncNbdClient {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending = new Map<bigint, (r: Reply) => void>();
  private nextCookie = 1n;
  private closed = false;
  private waiter: (() => void) | undefined;
  size = 0;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.waiter?.();
      this.drain();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
      for (const resolve of this.pending.values()) resolve({ error: -1 });
      this.pending.clear();
    });
    socket.on('error', () => undefined);
  }

  static async connect(port: number, name: string): Promise<AsyncNbdClient> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.setNoDelay(true);
    const c = new AsyncNbdClient(socket);
    await c.handshake(name);
    return c;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error('connection closed during handshake');
      await new Promise<void>((r) => (this.waiter = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  private handshaking = true;

  private async handshake(name: string): Promise<void> {
    await this.read(18);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3);
    this.socket.write(flags);
    this.socket.write(optionRequest(OPT.GO, infoData(name)));
    for (;;) {
      const h = await this.read(20);
      const type = h.readUInt32BE(12);
      const data = await this.read(h.readUInt32BE(16));
      if (type === REP.INFO && data.readUInt16BE(0) === 0) this.size = Number(data.readBigUInt64BE(2));
      if (type === REP.ACK) break;
      if (type & 0x80000000) throw new Error(`GO refused: 0x${type.toString(16)} ${data.toString()}`);
    }
    this.handshaking = false;
    this.waiter = undefined;
    this.drain();
  }

  private drain(): void {
    if (this.handshaking) return;
    while (this.buf.length >= 16) {
      const error = this.buf.readUInt32BE(4);
      const cookie = this.buf.readBigUInt64BE(8);
      this.buf = this.buf.subarray(16);
      const resolve = this.pending.get(cookie);
      this.pending.delete(cookie);
      resolve?.({ error });
    }
  }

  /** Send one request (no READs: replies carry no data here); resolves with its reply. */
  send(type: number, opts: { flags?: number; offset?: number; length?: number; payload?: Buffer }): Promise<Reply> {
    if (this.closed) return Promise.resolve({ error: -1 });
    const cookie = this.nextCookie++;
    const p = new Promise<Reply>((resolve) => this.pending.set(cookie, resolve));
    this.socket.write(request(type, { ...opts, cookie }));
    return p;
  }

  write(offset: number, payload: Buffer, fua: boolean): Promise<Reply> {
    return this.send(CMD.WRITE, { offset, payload, flags: fua ? 1 : 0 });
  }

  flush(): Promise<Reply> {
    return this.send(CMD.FLUSH, {});
  }

  close(): void {
    this.socket.destroy();
  }
}
