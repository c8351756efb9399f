/**
 * Transmission-phase wire format: pure encode/decode, no I/O.
 *
 * Request (28 bytes, + `length` payload bytes for WRITE only):
 *   [ 0.. 3] 0x25609513   [ 4.. 5] command flags   [ 6.. 7] type
 *   [ 8..15] cookie       [16..23] offset          [24..27] length
 *
 * Simple reply (16 bytes, + data for a successful READ):
 *   [ 0.. 3] 0x67446698   [ 4.. 7] error           [ 8..15] cookie
 *
 * Structured reply chunk (20 bytes + payload):
 *   [ 0.. 3] 0x668e33ef   [ 4.. 5] flags (DONE)    [ 6.. 7] type
 *   [ 8..15] cookie       [16..19] payload length
 *
 * The cookie is opaque: it is kept as two u32 halves (no BigInt on the hot path).
 * Writers take (buf, offset) so a reply header and its data can share one Buffer.
 */
import {
  NbdReplyFlag,
  NbdReplyType,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { ProtocolError } from './nbd-errors.js';

export interface RequestHeader {
  readonly flags: number;
  readonly type: number;
  readonly cookieHi: number;
  readonly cookieLo: number;
  /** May exceed 2^53 (then it is not a safe integer and validation rejects it). */
  readonly offset: number;
  /** Compact headers: u32. Extended headers (extended-codec.ts): u64, possibly unsafe. */
  readonly length: number;
  /** Extended headers only: the offset as sent, echoed by extended reply headers. */
  readonly offsetHi?: number;
  readonly offsetLo?: number;
}

export function decodeRequestHeader(buf: Buffer, at = 0): RequestHeader {
  if (buf.length - at < REQUEST_HEADER_SIZE) throw new RangeError('request header needs 28 bytes');
  const magic = buf.readUInt32BE(at);
  if (magic !== REQUEST_MAGIC) {
    throw new ProtocolError('NBD_ERR_BAD_MAGIC', `bad request magic 0x${magic.toString(16).padStart(8, '0')}`);
  }
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookieHi: buf.readUInt32BE(at + 8),
    cookieLo: buf.readUInt32BE(at + 12),
    offset: buf.readUInt32BE(at + 16) * 0x100000000 + buf.readUInt32BE(at + 20),
    length: buf.readUInt32BE(at + 24),
  };
}

export function writeSimpleReply(buf: Buffer, at: number, error: number, cookieHi: number, cookieLo: number): void {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error, at + 4);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
}

export function encodeSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  writeSimpleReply(b, 0, error, cookieHi, cookieLo);
  return b;
}

export function writeChunkHeader(
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  buf.writeUInt32BE(length, at + 16);
}

/** OFFSET_DATA chunk header (20 + 8 bytes); the data follows at at+28. */
export const OFFSET_DATA_HEADER_SIZE = STRUCTURED_HEADER_SIZE + 8;
export function writeOffsetDataHeader(
  buf: Buffer,
  at: number,
  done: boolean,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  dataLength: number,
): void {
  writeChunkHeader(buf, at, done ? NbdReplyFlag.DONE : 0, NbdReplyType.OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  writeU64(buf, at + STRUCTURED_HEADER_SIZE, offset);
}

/** OFFSET_HOLE chunk (20 + 12 bytes). */
export const OFFSET_HOLE_SIZE = STRUCTURED_HEADER_SIZE + 12;
export function writeOffsetHole(
  buf: Buffer,
  at: number,
  done: boolean,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  holeLength: number,
): void {
  writeChunkHeader(buf, at, done ? NbdReplyFlag.DONE : 0, NbdReplyType.OFFSET_HOLE, cookieHi, cookieLo, 12);
  writeU64(buf, at + STRUCTURED_HEADER_SIZE, offset);
  buf.writeUInt32BE(holeLength, at + STRUCTURED_HEADER_SIZE + 8);
}

/** NONE chunk with DONE: a structured success with no payload. */
export function encodeNoneChunk(cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE);
  writeChunkHeader(b, 0, NbdReplyFlag.DONE, NbdReplyType.NONE, cookieHi, cookieLo, 0);
  return b;
}

/**
 * ERROR chunk (u32 error, u16 msglen, msg) or, with `offset`, ERROR_OFFSET
 * (… then u64 offset). Always DONE: we send at most one error chunk, last.
 */
export function encodeErrorChunk(
  cookieHi: number,
  cookieLo: number,
  error: number,
  message: string,
  offset?: number,
): Buffer {
  let msg = Buffer.from(message, 'utf8');
  if (msg.length > 4096) msg = msg.subarray(0, 4096);
  const hasOffset = offset !== undefined;
  const payload = 6 + msg.length + (hasOffset ? 8 : 0);
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + payload);
  writeChunkHeader(
    b,
    0,
    NbdReplyFlag.DONE,
    hasOffset ? NbdReplyType.ERROR_OFFSET : NbdReplyType.ERROR,
    cookieHi,
    cookieLo,
    payload,
  );
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  if (hasOffset) writeU64(b, 26 + msg.length, offset);
  return b;
}

/**
 * BLOCK_STATUS chunk: u32 context id, then `count` (u32 length, u32 flags) pairs taken
 * from `pairs` (length0, flags0, length1, flags1, …).
 */
export function encodeBlockStatusChunk(
  cookieHi: number,
  cookieLo: number,
  done: boolean,
  contextId: number,
  pairs: readonly number[],
): Buffer {
  const payload = 4 + pairs.length * 4;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + payload);
  writeChunkHeader(b, 0, done ? NbdReplyFlag.DONE : 0, NbdReplyType.BLOCK_STATUS, cookieHi, cookieLo, payload);
  b.writeUInt32BE(contextId, 20);
  for (let i = 0; i < pairs.length; i++) b.writeUInt32BE(pairs[i]! >>> 0, 24 + 4 * i);
  return b;
}

function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}
