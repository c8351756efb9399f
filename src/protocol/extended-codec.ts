/**
 * Extended-headers wire format (docs/protocol.md#extended-headers): pure encode/decode, no I/O.
 *
 * Extended request (32 bytes, + `length` payload bytes only when flags has PAYLOAD_LEN):
 *   [ 0.. 3] 0x21e41c71   [ 4.. 5] command flags   [ 6.. 7] type
 *   [ 8..15] cookie       [16..23] offset          [24..31] length (u64)
 *
 * Extended reply chunk (32 bytes + payload): every reply once negotiated, never simple replies:
 *   [ 0.. 3] 0x6e8a278c   [ 4.. 5] flags (DONE)    [ 6.. 7] type
 *   [ 8..15] cookie       [16..23] the request's offset, echoed   [24..31] payload length (u64)
 *
 * BLOCK_STATUS_EXT payload: u32 context id, u32 descriptor count, then count × (u64 length,
 * u64 status). BLOCK_STATUS request payload (with PAYLOAD_LEN): u64 effect length, then n × u32
 * context ids to answer for.
 *
 * Lengths are kept as numbers: a u64 above 2^53 decodes to an unsafe integer, which request
 * validation refuses (no export is that large). The offset's two u32 halves are kept as sent so
 * that reply headers echo it exactly even then.
 */
import { EXTENDED_REPLY_HEADER_SIZE, EXTENDED_REPLY_MAGIC, EXTENDED_REQUEST_HEADER_SIZE, EXTENDED_REQUEST_MAGIC, NbdReplyFlag, NbdReplyType } from './constants.js';
import { ProtocolError } from './nbd-errors.js';
import type { RequestHeader } from './transmission-codec.js';

export function decodeExtendedRequestHeader(buf: Buffer, at = 0): RequestHeader {
  if (buf.length - at < EXTENDED_REQUEST_HEADER_SIZE) throw new RangeError('extended request header needs 32 bytes');
  const magic = buf.readUInt32BE(at);
  if (magic !== EXTENDED_REQUEST_MAGIC) {
    throw new ProtocolError('NBD_ERR_BAD_MAGIC', `bad extended request magic 0x${magic.toString(16).padStart(8, '0')} (extended headers were negotiated)`);
  }
  const offsetHi = buf.readUInt32BE(at + 16);
  const offsetLo = buf.readUInt32BE(at + 20);
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookieHi: buf.readUInt32BE(at + 8),
    cookieLo: buf.readUInt32BE(at + 12),
    offset: offsetHi * 0x100000000 + offsetLo,
    length: buf.readUInt32BE(at + 24) * 0x100000000 + buf.readUInt32BE(at + 28),
    offsetHi,
    offsetLo,
  };
}

/** What an extended reply header echoes: the request's cookie and offset. */
export type ReplyTarget = Pick<RequestHeader, 'cookieHi' | 'cookieLo' | 'offset' | 'offsetHi' | 'offsetLo'>;

export function writeExtendedChunkHeader(buf: Buffer, at: number, flags: number, type: number, to: ReplyTarget, length: number): void {
  buf.writeUInt32BE(EXTENDED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(to.cookieHi, at + 8);
  buf.writeUInt32BE(to.cookieLo, at + 12);
  if (to.offsetHi !== undefined && to.offsetLo !== undefined) {
    buf.writeUInt32BE(to.offsetHi, at + 16);
    buf.writeUInt32BE(to.offsetLo, at + 20);
  } else {
    writeU64(buf, at + 16, to.offset);
  }
  writeU64(buf, at + 24, length);
}

/**
 * BLOCK_STATUS_EXT chunk for one context: `pairs` is (length0, status0, length1, …); lengths
 * may exceed 32 bits, statuses are our contexts' 32-bit values (upper half zero, as the
 * specification requires of 32-bit contexts).
 */
export function encodeBlockStatusExtChunk(to: ReplyTarget, done: boolean, contextId: number, pairs: readonly number[]): Buffer {
  const count = pairs.length / 2;
  const payload = 8 + count * 16;
  const b = Buffer.allocUnsafe(EXTENDED_REPLY_HEADER_SIZE + payload);
  writeExtendedChunkHeader(b, 0, done ? NbdReplyFlag.DONE : 0, NbdReplyType.BLOCK_STATUS_EXT, to, payload);
  b.writeUInt32BE(contextId, 32);
  b.writeUInt32BE(count, 36);
  for (let i = 0; i < count; i++) {
    writeU64(b, 40 + 16 * i, pairs[2 * i]!);
    writeU64(b, 48 + 16 * i, pairs[2 * i + 1]! >>> 0);
  }
  return b;
}

/** A BLOCK_STATUS request payload: the effect length and the context ids to answer for. */
export interface StatusPayload {
  readonly length: number;
  readonly ids: readonly number[];
}

/**
 * Decode a BLOCK_STATUS payload (8 + 4n bytes). Returns a reason string when it is malformed
 * (wrong size, no id, a duplicate id): the caller answers EINVAL, the payload having been read.
 * Whether each id was negotiated is the caller's question.
 */
export function decodeStatusPayload(payload: Buffer): StatusPayload | string {
  if (payload.length < 12 || payload.length % 4 !== 0) {
    return `BLOCK_STATUS payload is ${payload.length} bytes (must be 8 + 4 × n with at least one context id)`;
  }
  const length = payload.readUInt32BE(0) * 0x100000000 + payload.readUInt32BE(4);
  const ids: number[] = [];
  for (let at = 8; at < payload.length; at += 4) {
    const id = payload.readUInt32BE(at);
    if (ids.includes(id)) return `BLOCK_STATUS payload names context id ${id} twice`;
    ids.push(id);
  }
  return { length, ids };
}

function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000) >>> 0, at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}
