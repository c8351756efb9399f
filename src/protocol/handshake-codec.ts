/**
 * Handshake (option haggling) wire format: pure encode/decode, no I/O.
 *
 * Server greeting (18 bytes):            Option request (16 + len):
 *   [ 0.. 7] NBDMAGIC                      [ 0.. 7] IHAVEOPT
 *   [ 8..15] IHAVEOPT                      [ 8..11] option
 *   [16..17] handshake flags               [12..15] length, then `length` bytes of data
 *
 * Option reply (20 + len):               EXPORT_NAME success (10 or 134 bytes):
 *   [ 0.. 7] 0x3e889045565a9               [0..7] size, [8..9] transmission flags,
 *   [ 8..11] option                        then 124 zero bytes unless C_NO_ZEROES
 *   [12..15] reply type
 *   [16..19] length, then data
 */
import {
  IHAVEOPT,
  MAX_STRING_LENGTH,
  NBD_MAGIC,
  NbdInfo,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
} from './constants.js';
import { ProtocolError } from './nbd-errors.js';

/** The option's data is malformed: answer NBD_REP_ERR_INVALID (payload already consumed). */
export class InvalidOptionError extends Error {
  override name = 'InvalidOptionError';
}

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export function decodeClientFlags(buf: Buffer): number {
  return buf.readUInt32BE(0);
}

export interface OptionHeader {
  readonly option: number;
  readonly length: number;
}

export function decodeOptionHeader(buf: Buffer): OptionHeader {
  if (buf.length < OPTION_HEADER_SIZE) throw new RangeError('option header needs 16 bytes');
  const magic = buf.readBigUInt64BE(0);
  if (magic !== IHAVEOPT) {
    throw new ProtocolError('NBD_ERR_BAD_MAGIC', `bad option magic 0x${magic.toString(16)} (expected IHAVEOPT)`);
  }
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data?.length ?? 0;
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + len);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** EXPORT_NAME success: size, flags and (unless C_NO_ZEROES) 124 zero bytes. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** NBD_REP_INFO payload for NBD_INFO_EXPORT: u16 type, u64 size, u16 flags. */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NbdInfo.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION: u16 type, then the UTF-8 text. */
export function encodeInfoText(type: typeof NbdInfo.NAME | typeof NbdInfo.DESCRIPTION, text: string): Buffer {
  const t = Buffer.from(text, 'utf8');
  const b = Buffer.allocUnsafe(2 + t.length);
  b.writeUInt16BE(type, 0);
  t.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

/** NBD_REP_SERVER payload: u32 namelen, name, description. */
export function encodeServerEntry(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

/** NBD_REP_META_CONTEXT payload: u32 context id, name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** Validate an on-wire string: ≤ 4096 bytes (else the peer is misbehaving: close). */
export function decodeString(buf: Buffer, what: string): string {
  if (buf.length > MAX_STRING_LENGTH) {
    throw new ProtocolError('NBD_ERR_TOO_LONG', `${what} is ${buf.length} bytes (limit ${MAX_STRING_LENGTH})`);
  }
  if (buf.includes(0)) throw new InvalidOptionError(`${what} contains a NUL byte`);
  return buf.toString('utf8');
}

export interface InfoRequest {
  readonly name: string;
  readonly infos: readonly number[];
}

/**
 * INFO / GO data:
 *   [0..3] namelen, [4..4+namelen) name, u16 n, n × u16 info type
 */
export function decodeInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) throw new InvalidOptionError(`INFO/GO data is ${data.length} bytes (minimum 6)`);
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) {
    throw new InvalidOptionError(`INFO/GO name length ${nameLen} exceeds option length ${data.length}`);
  }
  const name = decodeString(data.subarray(4, 4 + nameLen), 'export name');
  const n = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * n) {
    throw new InvalidOptionError(`INFO/GO with ${n} info requests needs ${6 + nameLen + 2 * n} bytes, got ${data.length}`);
  }
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

export interface MetaContextRequest {
  readonly name: string;
  readonly queries: readonly string[];
}

/**
 * LIST_META_CONTEXT / SET_META_CONTEXT data:
 *   u32 namelen, name, u32 nqueries, nqueries × (u32 len, query)
 */
export function decodeMetaContextRequest(data: Buffer): MetaContextRequest {
  if (data.length < 8) throw new InvalidOptionError(`meta context data is ${data.length} bytes (minimum 8)`);
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) {
    throw new InvalidOptionError(`meta context export name length ${nameLen} exceeds option length ${data.length}`);
  }
  const name = decodeString(data.subarray(4, 4 + nameLen), 'export name');
  const count = data.readUInt32BE(4 + nameLen);
  let pos = 8 + nameLen;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (pos + 4 > data.length) throw new InvalidOptionError(`meta context query ${i} header is truncated`);
    const qLen = data.readUInt32BE(pos);
    pos += 4;
    if (qLen > data.length - pos) throw new InvalidOptionError(`meta context query ${i} length ${qLen} is truncated`);
    queries.push(decodeString(data.subarray(pos, pos + qLen), 'meta context query'));
    pos += qLen;
  }
  if (pos !== data.length) throw new InvalidOptionError(`meta context data has ${data.length - pos} trailing bytes`);
  return { name, queries };
}
