/**
 * The transmission commands (docs/protocol.md#requests): what each NBD command does with
 * the device and how it is answered. TransmissionSession (transmission.ts) parses,
 * validates and schedules requests; runRequest runs one of them to its reply, here.
 *
 * - READ: one Buffer for header(s)+data, the device reads into a subarray; structured
 *   READs of at least SPARSE_READ_MIN ask block status first and send zero runs as holes.
 * - BLOCK_STATUS: base:allocation and qemu:allocation-depth from the same device extents.
 * - Chunks are framed by s.chunks: structured or extended headers, whichever was negotiated.
 * - Device errors become NBD error replies (the cause is logged at debug).
 */
import type { BlockDevice, Extent } from '../block/block-device.js';
import { EXTENT_HOLE, EXTENT_ZERO } from '../block/block-device.js';
import { MAX_EXTENTS, NbdCmd, NbdCmdFlag, NbdError, SIMPLE_REPLY_SIZE, nameOf } from '../protocol/constants.js';
import { RequestError, toNbdError } from '../protocol/nbd-errors.js';
import { writeSimpleReply, type RequestHeader } from '../protocol/transmission-codec.js';
import { decodeStatusPayload, type StatusPayload } from '../protocol/extended-codec.js';
import type { TransmissionSession } from './transmission.js';
/**
 * Extents per BLOCK_STATUS reply (spec maximum 2^20). Lower, so a fragmented multi-GiB
 * query cannot build a huge reply; the client simply asks again from where we stopped.
 */
export const MAX_REPLY_EXTENTS = Math.min(MAX_EXTENTS, 1 << 16);
/** Structured READs at least this long are split into data/hole chunks. */
export const SPARSE_READ_MIN = 64 * 1024;

/** One request, start to reply. Never throws: failures become error replies. */
export async function runRequest(
  s: TransmissionSession,
  h: RequestHeader,
  payload: Buffer | undefined,
  bytes: number,
  pooled: Buffer | undefined,
): Promise<void> {
  const started = s.observer ? process.hrtime.bigint() : 0n;
  let errno = 0;
  try {
    await HANDLERS[h.type]!(s, h, payload);
    // The device is done with the payload: its buffer can serve the next request.
    // (Not on failure: a failed multi-part write may still have I/O using it.)
    if (pooled) s.pool.release(pooled);
  } catch (err) {
    const error = toNbdError(err);
    errno = error;
    // Keep the real cause for the operator; the client only gets an errno.
    // EIO is the server's own fault (a failing disk, a base that shrank): the operator must see it.
    const level = error === NbdError.EIO ? 'warn' : 'debug';
    s.io.log[level]({ err, cmd: nameOf(NbdCmd, h.type), offset: h.offset, length: h.length, nbdError: error }, 'request failed');
    const hasOffset = h.type !== NbdCmd.FLUSH && h.type !== NbdCmd.DISC;
    s.sendError(h, error, `${nameOf(NbdCmd, h.type)} failed: ${(err as Error)?.message ?? String(err)}`, hasOffset ? h.offset : undefined);
  } finally {
    s.complete(bytes);
    s.observer?.(h.type, h.length, started, errno);
  }
}

type Handler = (s: TransmissionSession, h: RequestHeader, payload: Buffer | undefined) => Promise<void>;

async function handleRead(s: TransmissionSession, h: RequestHeader): Promise<void> {
  const { offset, length } = h;
  if (!s.structured) {
    // Simple reply: nothing is sent until the data is in, so an error can still be reported.
    const reply = s.replyBuffer(SIMPLE_REPLY_SIZE + length);
    if (length > 0) await s.device.read(offset, reply.buf.subarray(SIMPLE_REPLY_SIZE));
    writeSimpleReply(reply.buf, 0, 0, h.cookieHi, h.cookieLo);
    s.sendReply(reply);
    return;
  }
  if (length === 0) {
    s.send(s.chunks.none(h));
    return;
  }
  if ((h.flags & NbdCmdFlag.DF) === 0 && length >= SPARSE_READ_MIN && s.device.capabilities.blockStatus) {
    const extents = await collectExtents(s.device, offset, length, false);
    if (extents.some(isZero)) return sparseRead(s, h, extents);
  }
  const c = s.chunks;
  const reply = s.replyBuffer(c.dataHeaderSize + length);
  await s.device.read(offset, reply.buf.subarray(c.dataHeaderSize));
  c.writeDataHeader(reply.buf, 0, true, h, offset, length);
  s.sendReply(reply);
}

function isZero(e: Extent): boolean {
  return (e.flags & EXTENT_ZERO) !== 0;
}

/** One Buffer holding OFFSET_HOLE chunks for zero extents and OFFSET_DATA chunks (read in place). */
async function sparseRead(s: TransmissionSession, h: RequestHeader, extents: readonly Extent[]): Promise<void> {
  // Coalesce neighbours of the same kind so each run becomes one chunk.
  const runs: Array<{ zero: boolean; length: number }> = [];
  for (const e of extents) {
    const zero = isZero(e);
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.length += e.length;
    else runs.push({ zero, length: e.length });
  }
  // The device may have described less than the whole range (extent cap): read the rest.
  let covered = 0;
  for (const r of runs) covered += r.length;
  if (covered < h.length) runs.push({ zero: false, length: h.length - covered });
  const c = s.chunks;
  let total = 0;
  for (const r of runs) total += r.zero ? c.holeSize : c.dataHeaderSize + r.length;
  const reply = s.replyBuffer(total);
  const buf = reply.buf;
  const reads: Promise<void>[] = [];
  let pos = 0;
  let off = h.offset;
  for (let i = 0; i < runs.length; i++) {
    const r = runs[i]!;
    const done = i === runs.length - 1;
    if (r.zero) {
      c.writeHole(buf, pos, done, h, off, r.length);
      pos += c.holeSize;
    } else {
      c.writeDataHeader(buf, pos, done, h, off, r.length);
      pos += c.dataHeaderSize;
      reads.push(s.device.read(off, buf.subarray(pos, pos + r.length)));
      pos += r.length;
    }
    off += r.length;
  }
  await Promise.all(reads);
  s.sendReply(reply);
}

/**
 * Extents covering [offset, offset+length) (or just the first with `one`), asking the
 * device again when it answers short. Stops at MAX_REPLY_EXTENTS (the client asks again).
 */
async function collectExtents(device: BlockDevice, offset: number, length: number, one: boolean): Promise<Extent[]> {
  const out: Extent[] = [];
  let covered = 0;
  while (covered < length && out.length < MAX_REPLY_EXTENTS) {
    const got = await device.blockStatus(offset + covered, length - covered);
    if (got.length === 0) break;
    for (const e of got) {
      out.push(e);
      covered += e.length;
    }
    if (one) break;
  }
  return out;
}

async function handleWrite(s: TransmissionSession, h: RequestHeader, payload: Buffer | undefined): Promise<void> {
  if (h.length > 0) await s.device.write(h.offset, payload!, { fua: (h.flags & NbdCmdFlag.FUA) !== 0 });
  else if (h.flags & NbdCmdFlag.FUA) await s.device.flush();
  s.sendOk(h);
}

async function handleFlush(s: TransmissionSession, h: RequestHeader): Promise<void> {
  // The device is shared by every connection of the export, so this makes all of
  // their completed writes durable — what CAN_MULTI_CONN promises.
  await s.device.flush();
  s.sendOk(h);
}

async function handleTrim(s: TransmissionSession, h: RequestHeader): Promise<void> {
  await s.device.trim(h.offset, h.length, { fua: (h.flags & NbdCmdFlag.FUA) !== 0 });
  s.sendOk(h);
}

async function handleCache(s: TransmissionSession, h: RequestHeader): Promise<void> {
  await s.device.cache(h.offset, h.length);
  s.sendOk(h);
}

async function handleWriteZeroes(s: TransmissionSession, h: RequestHeader): Promise<void> {
  await s.device.writeZeroes(h.offset, h.length, {
    fua: (h.flags & NbdCmdFlag.FUA) !== 0,
    noHole: (h.flags & NbdCmdFlag.NO_HOLE) !== 0,
    fast: (h.flags & NbdCmdFlag.FAST_ZERO) !== 0,
  });
  s.sendOk(h);
}

/** `payload`: extended headers' BLOCK_STATUS_PAYLOAD form, validated: answer only the ids it names. */
async function handleBlockStatus(s: TransmissionSession, h: RequestHeader, payload: Buffer | undefined): Promise<void> {
  const size = s.device.size;
  if (h.offset >= size) {
    // Only reachable with length 0 at the very end: nothing to describe.
    s.send(s.chunks.none(h));
    return;
  }
  const one = (h.flags & NbdCmdFlag.REQ_ONE) !== 0;
  // Length 0 is a harmless no-op: describe the extent at `offset` (the last extent may overrun).
  const length = h.length === 0 ? 1 : h.length;
  const extents = await collectExtents(s.device, h.offset, length, one);
  if (extents.length === 0) throw new RequestError(NbdError.EIO, 'device returned no extents');
  const chunks: Buffer[] = [];
  const only = payload ? (decodeStatusPayload(payload) as StatusPayload).ids : undefined;
  const ids = [s.baseAllocationId, s.allocationDepthId].map((id) => (only && !only.includes(id) ? 0 : id));
  const values = [baseAllocationValue, depthValue];
  let last = -1;
  for (let i = 0; i < 2; i++) if (ids[i]) last = i;
  for (let i = 0; i < 2; i++) {
    if (!ids[i]) continue;
    chunks.push(s.chunks.blockStatus(h, i === last, ids[i]!, extentPairs(extents, values[i]!, one, s.chunks.maxExtentLength)));
  }
  s.send(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
}

function baseAllocationValue(e: Extent): number {
  return e.flags & (EXTENT_HOLE | EXTENT_ZERO);
}

/** qemu:allocation-depth: one u32 per extent, the depth itself (0 = unallocated). */
function depthValue(e: Extent): number {
  return e.depth;
}

/** (length, value) pairs, merging neighbours with equal values up to `maxLength`; REQ_ONE keeps the first. */
function extentPairs(extents: readonly Extent[], value: (e: Extent) => number, one: boolean, maxLength: number): number[] {
  const pairs: number[] = [];
  for (const e of extents) {
    const v = value(e);
    const n = pairs.length;
    if (n > 0 && pairs[n - 1] === v && pairs[n - 2]! + e.length <= maxLength) pairs[n - 2] = pairs[n - 2]! + e.length;
    else pairs.push(e.length, v);
  }
  return one ? pairs.slice(0, 2) : pairs;
}

const HANDLERS: Readonly<Record<number, Handler>> = {
  [NbdCmd.READ]: handleRead,
  [NbdCmd.WRITE]: handleWrite,
  [NbdCmd.FLUSH]: handleFlush,
  [NbdCmd.TRIM]: handleTrim,
  [NbdCmd.CACHE]: handleCache,
  [NbdCmd.WRITE_ZEROES]: handleWriteZeroes,
  [NbdCmd.BLOCK_STATUS]: handleBlockStatus,
};

