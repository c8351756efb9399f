/**
 * Structure-aware NBD traffic for the protocol fuzzer: a valid client conversation
 * (flags, options, then transmission requests) built field by field, so mutations can
 * target fields (lengths, magics, offsets, flags) as well as raw bytes.
 */
import { CMD, OPT, infoData, metaData, optionRequest, request, u32 } from '../helpers/nbd-fixtures.js';
import { EXT, extRequest, statusPayload } from '../helpers/nbd-extended.js';

interface Field {
  pos: number;
  size: number;
}

class Builder {
  private parts: Buffer[] = [];
  private length = 0;
  readonly fields: Field[] = [];

  add(buf: Buffer, fields: Array<[at: number, size: number]> = []): void {
    for (const [at, size] of fields) this.fields.push({ pos: this.length + at, size });
    this.parts.push(buf);
    this.length += buf.length;
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

const NAMES = ['disk', '', 'nope', 'disk\0x', 'a'.repeat(300)];
const QUERIES = ['base:allocation', 'qemu:allocation-depth', 'base:', 'qemu:', 'x:y', ''];
const INTERESTING_U32 = [0, 1, 0x7f, 0x80, 0xff, 0x1000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)]!;
}

/**
 * A plausible conversation against an export of `size` bytes. About a third negotiate extended
 * headers first and then speak 32-byte requests (u64 lengths, PAYLOAD_LEN on WRITE, sometimes a
 * BLOCK_STATUS context-id payload; now and then a WRITE without PAYLOAD_LEN, as QEMU 10 sends it, or a compact header).
 */
export function conversation(r: () => number, size: number): { bytes: Buffer; fields: Field[] } {
  const b = new Builder();
  b.add(u32(r() < 0.9 ? 3 : pick(r, [0, 1, 2, 4, 0xffffffff])), [[0, 4]]);
  const nOpts = Math.floor(r() * 5);
  const opt = (o: number, data: Buffer = Buffer.alloc(0)) => b.add(optionRequest(o, data), [[0, 8], [8, 4], [12, 4]]);
  const extended = r() < 0.35;
  if (extended) opt(EXT.OPT_EXTENDED_HEADERS);
  for (let i = 0; i < nOpts; i++) {
    const x = r();
    if (x < 0.2) opt(OPT.STRUCTURED_REPLY);
    else if (x < 0.35) opt(OPT.LIST);
    else if (x < 0.55) opt(OPT.INFO, infoData(pick(r, NAMES), r() < 0.5 ? [0, 1, 2, 3] : []));
    else if (x < 0.7) opt(OPT.LIST_META, metaData(pick(r, NAMES), [pick(r, QUERIES)]));
    else if (x < 0.85) opt(OPT.SET_META, metaData('disk', [pick(r, QUERIES), pick(r, QUERIES)]));
    else opt(Math.floor(r() * 16));
  }
  const end = r();
  if (end < 0.1) {
    opt(OPT.ABORT);
    return { bytes: b.bytes(), fields: b.fields };
  }
  if (end < 0.25) b.add(optionRequest(OPT.EXPORT_NAME, Buffer.from(r() < 0.8 ? 'disk' : pick(r, NAMES))), [[0, 8], [12, 4]]);
  else opt(OPT.GO, infoData(r() < 0.9 ? 'disk' : pick(r, NAMES), [3]));
  const nReq = Math.floor(r() * 8);
  for (let i = 0; i < nReq; i++) {
    const type = r() < 0.9 ? pick(r, [CMD.READ, CMD.READ, CMD.WRITE, CMD.WRITE, CMD.FLUSH, CMD.TRIM, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS, CMD.CACHE]) : pick(r, [CMD.DISC, 8, 42, 0xffff]);
    const length = r() < 0.9 ? Math.floor(r() * (r() < 0.9 ? 4096 : 65536)) : pick(r, INTERESTING_U32);
    const offset = r() < 0.9 ? Math.floor(r() * Math.max(1, size - length)) : pick(r, [size, size - 1, 2 ** 53 - 1, 2 ** 63]);
    const flags = r() < 0.7 ? 0 : Math.floor(r() * 32);
    const payload = type === CMD.WRITE && length <= 65536 ? Buffer.alloc(length, 0x5a) : undefined;
    if (extended && r() < 0.95) {
      b.add(extendedRequest(r, type, flags, BigInt(i + 1), BigInt(Math.min(offset, 2 ** 64 - 1)), length, payload), [[0, 4], [4, 2], [6, 2], [16, 8], [24, 8]]);
      continue;
    }
    b.add(request(type, { flags, cookie: BigInt(i + 1), offset: BigInt(Math.min(offset, 2 ** 64 - 1)), length, payload }), [[0, 4], [4, 2], [6, 2], [16, 8], [24, 4]]);
  }
  return { bytes: b.bytes(), fields: b.fields };
}

const INTERESTING_U64 = [2n ** 32n, 2n ** 32n + 1n, 5n * 2n ** 30n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

/** One extended request: PAYLOAD_LEN on WRITE (mostly), u64 lengths, BLOCK_STATUS payloads. */
function extendedRequest(r: () => number, type: number, flags: number, cookie: bigint, offset: bigint, length: number, payload: Buffer | undefined): Buffer {
  const len: bigint = r() < 0.1 ? pick(r, INTERESTING_U64) : BigInt(length);
  if (type === CMD.WRITE && r() < 0.95) return extRequest(type, { flags: flags | EXT.CMD_FLAG_PAYLOAD_LEN, cookie, offset, payload: payload ?? Buffer.alloc(0) });
  if (type === CMD.BLOCK_STATUS && r() < 0.4) {
    const ids = Array.from({ length: Math.floor(r() * 4) }, () => pick(r, [0, 1, 2, 3, 0xffffffff]));
    return extRequest(type, { flags: flags | EXT.CMD_FLAG_PAYLOAD_LEN, cookie, offset, payload: statusPayload(len, ids) });
  }
  return extRequest(type, { flags, cookie, offset, length: len });
}

/** Apply 0–4 mutations (field-aware most of the time). */
export function mutate(r: () => number, c: { bytes: Buffer; fields: Field[] }): Buffer {
  let buf = Buffer.from(c.bytes);
  const n = Math.floor(r() * 5);
  for (let i = 0; i < n && buf.length > 0; i++) {
    const x = r();
    if (x < 0.45 && c.fields.length > 0) {
      const f = pick(r, c.fields);
      if (f.pos + f.size > buf.length) continue;
      if (f.size === 4) buf.writeUInt32BE(pick(r, INTERESTING_U32), f.pos);
      else if (f.size === 2) buf.writeUInt16BE(Math.floor(r() * 65536), f.pos);
      else buf[f.pos + Math.floor(r() * f.size)] ^= 1 << Math.floor(r() * 8);
    } else if (x < 0.65) {
      buf[Math.floor(r() * buf.length)] ^= 1 << Math.floor(r() * 8);
    } else if (x < 0.8) {
      buf = buf.subarray(0, Math.floor(r() * buf.length));
    } else if (x < 0.9) {
      const at = Math.floor(r() * buf.length);
      const len = Math.floor(r() * 64);
      buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at, at + len), buf.subarray(at)]);
    } else {
      const at = Math.floor(r() * buf.length);
      const junk = Buffer.alloc(Math.floor(r() * 32));
      for (let k = 0; k < junk.length; k++) junk[k] = Math.floor(r() * 256);
      buf = Buffer.concat([buf.subarray(0, at), junk, buf.subarray(at)]);
    }
  }
  return buf;
}
