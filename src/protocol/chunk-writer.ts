/**
 * Reply chunks in the header style the client negotiated (docs/protocol.md#replies): structured
 * replies (20-byte chunk headers, transmission-codec.ts) or extended headers (32-byte, echoing
 * the request's offset, extended-codec.ts). A session picks one ChunkWriter at the start, so the
 * command handlers write chunks without asking which style is in use; the payloads are the same
 * in both styles except block status (BLOCK_STATUS with u32 extents vs BLOCK_STATUS_EXT with u64).
 * Pure encoding, no I/O.
 */
import { EXTENDED_REPLY_HEADER_SIZE, NbdReplyFlag, NbdReplyType } from './constants.js';
import { encodeBlockStatusExtChunk, writeExtendedChunkHeader, type ReplyTarget } from './extended-codec.js';
import {
  OFFSET_DATA_HEADER_SIZE,
  OFFSET_HOLE_SIZE,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  writeOffsetDataHeader,
  writeOffsetHole,
} from './transmission-codec.js';

export interface ChunkWriter {
  readonly extended: boolean;
  /** Bytes before the data of an OFFSET_DATA chunk. */
  readonly dataHeaderSize: number;
  /** Bytes of a whole OFFSET_HOLE chunk. */
  readonly holeSize: number;
  /** Longest extent one block-status descriptor can carry (merging stops there). */
  readonly maxExtentLength: number;
  writeDataHeader(buf: Buffer, at: number, done: boolean, to: ReplyTarget, offset: number, dataLength: number): void;
  writeHole(buf: Buffer, at: number, done: boolean, to: ReplyTarget, offset: number, holeLength: number): void;
  /** NONE with DONE: success without payload. */
  none(to: ReplyTarget): Buffer;
  /** ERROR, or ERROR_OFFSET with `offset`; always DONE. */
  error(to: ReplyTarget, error: number, message: string, offset?: number): Buffer;
  /** One context's block-status chunk from (length, status) pairs. */
  blockStatus(to: ReplyTarget, done: boolean, contextId: number, pairs: readonly number[]): Buffer;
}

export const STRUCTURED_CHUNKS: ChunkWriter = Object.freeze({
  extended: false,
  dataHeaderSize: OFFSET_DATA_HEADER_SIZE,
  holeSize: OFFSET_HOLE_SIZE,
  maxExtentLength: 0xffffffff,
  writeDataHeader: (buf: Buffer, at: number, done: boolean, to: ReplyTarget, offset: number, dataLength: number) =>
    writeOffsetDataHeader(buf, at, done, to.cookieHi, to.cookieLo, offset, dataLength),
  writeHole: (buf: Buffer, at: number, done: boolean, to: ReplyTarget, offset: number, holeLength: number) =>
    writeOffsetHole(buf, at, done, to.cookieHi, to.cookieLo, offset, holeLength),
  none: (to: ReplyTarget) => encodeNoneChunk(to.cookieHi, to.cookieLo),
  error: (to: ReplyTarget, error: number, message: string, offset?: number) => encodeErrorChunk(to.cookieHi, to.cookieLo, error, message, offset),
  blockStatus: (to: ReplyTarget, done: boolean, contextId: number, pairs: readonly number[]) =>
    encodeBlockStatusChunk(to.cookieHi, to.cookieLo, done, contextId, pairs),
});

const H = EXTENDED_REPLY_HEADER_SIZE;
const done = (d: boolean) => (d ? NbdReplyFlag.DONE : 0);

export const EXTENDED_CHUNKS: ChunkWriter = Object.freeze({
  extended: true,
  dataHeaderSize: H + 8,
  holeSize: H + 12,
  // Statuses stay 32-bit, lengths are u64; 2^53 keeps the sums exact as numbers.
  maxExtentLength: Number.MAX_SAFE_INTEGER,
  writeDataHeader(buf: Buffer, at: number, last: boolean, to: ReplyTarget, offset: number, dataLength: number): void {
    writeExtendedChunkHeader(buf, at, done(last), NbdReplyType.OFFSET_DATA, to, 8 + dataLength);
    writeU64(buf, at + H, offset);
  },
  writeHole(buf: Buffer, at: number, last: boolean, to: ReplyTarget, offset: number, holeLength: number): void {
    writeExtendedChunkHeader(buf, at, done(last), NbdReplyType.OFFSET_HOLE, to, 12);
    writeU64(buf, at + H, offset);
    buf.writeUInt32BE(holeLength, at + H + 8);
  },
  none(to: ReplyTarget): Buffer {
    const b = Buffer.allocUnsafe(H);
    writeExtendedChunkHeader(b, 0, NbdReplyFlag.DONE, NbdReplyType.NONE, to, 0);
    return b;
  },
  error(to: ReplyTarget, error: number, message: string, offset?: number): Buffer {
    let msg = Buffer.from(message, 'utf8');
    if (msg.length > 4096) msg = msg.subarray(0, 4096);
    const hasOffset = offset !== undefined;
    const payload = 6 + msg.length + (hasOffset ? 8 : 0);
    const b = Buffer.allocUnsafe(H + payload);
    writeExtendedChunkHeader(b, 0, NbdReplyFlag.DONE, hasOffset ? NbdReplyType.ERROR_OFFSET : NbdReplyType.ERROR, to, payload);
    b.writeUInt32BE(error, H);
    b.writeUInt16BE(msg.length, H + 4);
    msg.copy(b, H + 6);
    if (hasOffset) writeU64(b, H + 6 + msg.length, offset);
    return b;
  },
  blockStatus: (to: ReplyTarget, last: boolean, contextId: number, pairs: readonly number[]) => encodeBlockStatusExtChunk(to, last, contextId, pairs),
});

function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000) >>> 0, at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}
