/**
 * Extended-headers client side for tests, written from the NBD specification's extended-headers
 * section with plain Buffer writes (like nbd-fixtures.ts it imports nothing from src/, so a bug
 * in the server's codec cannot be mirrored here). Debian 12's libnbd 1.14 and qemu 7.2 do not
 * speak extended headers, so these raw encoders are how the tests talk to that mode.
 *
 *   request:  u32 0x21e41c71, u16 flags, u16 type, u64 cookie, u64 offset, u64 length [, payload]
 *   chunk:    u32 0x6e8a278c, u16 flags, u16 type, u64 cookie, u64 offset (echo), u64 length, payload
 */
import { OPT, REP, RawClient, infoData, metaData, optionRequest, u16, u32, u64 } from './nbd-fixtures.js';

export const EXT = {
  OPT_EXTENDED_HEADERS: 11,
  REQUEST_MAGIC: 0x21e41c71,
  REPLY_MAGIC: 0x6e8a278c,
  ERR_EXT_HEADER_REQD: 0x8000000a,
  ERR_TLS_REQD: 0x80000005,
  FLAG_SEND_DF: 1 << 7,
  FLAG_BLOCK_STATUS_PAYLOAD: 1 << 12,
  CMD_FLAG_PAYLOAD_LEN: 1 << 5,
  CMD_FLAG_REQ_ONE: 1 << 3,
  CMD_FLAG_NO_HOLE: 1 << 1,
  TYPE_NONE: 0,
  TYPE_OFFSET_DATA: 1,
  TYPE_OFFSET_HOLE: 2,
  TYPE_BLOCK_STATUS: 5,
  TYPE_BLOCK_STATUS_EXT: 6,
  TYPE_ERROR: 0x8001,
  TYPE_ERROR_OFFSET: 0x8002,
} as const;

/** 32-byte extended request header (+ payload, whose length is `length` unless overridden). */
export function extRequest(
  type: number,
  opts: { flags?: number; cookie?: bigint; offset?: bigint | number; length?: bigint | number; payload?: Buffer; magic?: number } = {},
): Buffer {
  const header = Buffer.concat([
    u32(opts.magic ?? EXT.REQUEST_MAGIC),
    u16(opts.flags ?? 0),
    u16(type),
    u64(opts.cookie ?? 1n),
    u64(opts.offset ?? 0),
    u64(opts.length ?? opts.payload?.length ?? 0),
  ]);
  return opts.payload ? Buffer.concat([header, opts.payload]) : header;
}

/** BLOCK_STATUS payload: u64 effect length, then the context ids. */
export function statusPayload(effectLength: bigint | number, ids: number[]): Buffer {
  return Buffer.concat([u64(effectLength), ...ids.map(u32)]);
}

export interface ExtChunk {
  flags: number;
  type: number;
  cookie: bigint;
  /** The request offset the server echoed. */
  offset: bigint;
  payload: Buffer;
}

export async function readExtChunk(c: RawClient): Promise<ExtChunk> {
  const h = await c.read(32);
  const magic = h.readUInt32BE(0);
  if (magic !== EXT.REPLY_MAGIC) throw new Error(`expected an extended reply chunk, got magic 0x${magic.toString(16)}`);
  const length = h.readBigUInt64BE(24);
  if (length > 64n * 1024n * 1024n) throw new Error(`chunk length ${length} is implausible`);
  return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), offset: h.readBigUInt64BE(16), payload: await c.read(Number(length)) };
}

/** Chunks of one reply, up to and including the one with DONE. */
export async function readExtReply(c: RawClient): Promise<ExtChunk[]> {
  const out: ExtChunk[] = [];
  for (;;) {
    const chunk = await readExtChunk(c);
    out.push(chunk);
    if (chunk.flags & 1) return out;
  }
}

/** The error value of a reply (0 when it has no error chunk). */
export function replyError(chunks: ExtChunk[]): number {
  const err = chunks.find((ch) => ch.type & 0x8000);
  return err ? err.payload.readUInt32BE(0) : 0;
}

/** Error message of an error chunk. */
export function errorMessage(chunk: ExtChunk): string {
  return chunk.payload.subarray(6, 6 + chunk.payload.readUInt16BE(4)).toString('utf8');
}

export interface ExtDescriptor {
  length: bigint;
  status: bigint;
}

/** BLOCK_STATUS_EXT payload: u32 id, u32 count, count × (u64 length, u64 status). */
export function decodeStatusExt(chunk: ExtChunk): { id: number; extents: ExtDescriptor[] } {
  if (chunk.type !== EXT.TYPE_BLOCK_STATUS_EXT) throw new Error(`expected BLOCK_STATUS_EXT, got type ${chunk.type}`);
  const p = chunk.payload;
  const count = p.readUInt32BE(4);
  if (p.length !== 8 + 16 * count) throw new Error(`BLOCK_STATUS_EXT of ${p.length} bytes with count ${count}`);
  const extents: ExtDescriptor[] = [];
  for (let i = 0; i < count; i++) extents.push({ length: p.readBigUInt64BE(8 + 16 * i), status: p.readBigUInt64BE(16 + 16 * i) });
  return { id: p.readUInt32BE(0), extents };
}

/** Content of a READ reply reassembled from OFFSET_DATA/OFFSET_HOLE chunks. */
export function assembleRead(chunks: ExtChunk[], offset: number, length: number): Buffer {
  const out = Buffer.alloc(length, 0xee);
  for (const ch of chunks) {
    if (ch.type === EXT.TYPE_OFFSET_DATA) ch.payload.subarray(8).copy(out, Number(ch.payload.readBigUInt64BE(0)) - offset);
    else if (ch.type === EXT.TYPE_OFFSET_HOLE) out.fill(0, Number(ch.payload.readBigUInt64BE(0)) - offset, Number(ch.payload.readBigUInt64BE(0)) - offset + ch.payload.readUInt32BE(8));
  }
  return out;
}

/**
 * Greeting, EXTENDED_HEADERS (expects ACK), SET_META_CONTEXT when `meta` is given (returns the
 * ids by name), then GO. Returns size, transmission flags and the context ids.
 */
export async function extendedHandshake(
  c: RawClient,
  opts: { name?: string; meta?: string[]; structuredFirst?: boolean } = {},
): Promise<{ size: bigint; flags: number; ids: Record<string, number> }> {
  await c.greet();
  if (opts.structuredFirst) {
    c.write(optionRequest(OPT.STRUCTURED_REPLY));
    if ((await c.readOptionReply()).type !== REP.ACK) throw new Error('STRUCTURED_REPLY refused');
  }
  c.write(optionRequest(EXT.OPT_EXTENDED_HEADERS));
  const ack = await c.readOptionReply();
  if (ack.type !== REP.ACK) throw new Error(`EXTENDED_HEADERS refused: 0x${ack.type.toString(16)}`);
  const ids: Record<string, number> = {};
  if (opts.meta) {
    c.write(optionRequest(OPT.SET_META, metaData(opts.name ?? '', opts.meta)));
    for (const r of await c.readOptionReplies()) if (r.type === REP.META_CONTEXT) ids[r.data.subarray(4).toString()] = r.data.readUInt32BE(0);
  }
  c.write(optionRequest(OPT.GO, infoData(opts.name ?? '', [3])));
  const replies = await c.readOptionReplies();
  const last = replies[replies.length - 1]!;
  if (last.type !== REP.ACK) throw new Error(`GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
  const exp = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!;
  return { size: exp.data.readBigUInt64BE(2), flags: exp.data.readUInt16BE(10), ids };
}
