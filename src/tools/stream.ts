/**
 * Bounded-memory streaming over a device: every long command walks the disk in chunks of
 * at most CHUNK bytes (4 MiB), asking blockStatus first so that known-zero ranges of a
 * multi-GiB sparse image cost nothing, and checking for zeros in what it does read.
 * Memory use is one chunk buffer (two when comparing), independent of the disk size.
 */
import { EXTENT_ZERO, type BlockDevice } from '../block/block-device.js';

export const CHUNK = 4 * 1024 * 1024;
const ZEROS = Buffer.alloc(CHUNK);

export interface Range {
  readonly offset: number;
  readonly length: number;
  /** blockStatus says the range reads as zeros: no need to read it. */
  readonly zero: boolean;
}

/** Ranges of [start, end) of `device`, each at most `chunk` bytes, with the zero flag. */
export async function* walk(device: BlockDevice, start: number, end: number, chunk = CHUNK): AsyncGenerator<Range> {
  let pos = start;
  while (pos < end) {
    const ask = Math.min(end - pos, 1024 * chunk);
    const extents = await device.blockStatus(pos, ask);
    for (const e of extents) {
      const zero = (e.flags & EXTENT_ZERO) !== 0;
      const eEnd = Math.min(pos + e.length, end);
      // Zero ranges come in one piece (nothing is read); data ranges in chunks.
      if (zero) yield { offset: pos, length: eEnd - pos, zero };
      else for (let o = pos; o < eEnd; o += chunk) yield { offset: o, length: Math.min(chunk, eEnd - o), zero };
      pos = eEnd;
      if (pos >= end) break;
    }
  }
}

export function isZero(buf: Buffer): boolean {
  for (let pos = 0; pos < buf.length; pos += CHUNK) {
    const n = Math.min(CHUNK, buf.length - pos);
    if (!buf.subarray(pos, pos + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/**
 * Runs of `unit`-sized pieces of `buf` selected by `pick(i)` (i = unit index), coalesced:
 * yields [start, end) byte offsets within buf. The last unit may be short.
 */
export function* unitRuns(length: number, unit: number, pick: (start: number, end: number) => boolean): Generator<[number, number]> {
  let runStart = -1;
  for (let s = 0; s < length; s += unit) {
    const e = Math.min(length, s + unit);
    if (pick(s, e)) {
      if (runStart < 0) runStart = s;
    } else if (runStart >= 0) {
      yield [runStart, s];
      runStart = -1;
    }
  }
  if (runStart >= 0) yield [runStart, length];
}

/** [start, end) runs of non-zero `unit`s of buf. */
export function nonZeroRuns(buf: Buffer, unit: number): Generator<[number, number]> {
  return unitRuns(buf.length, unit, (s, e) => !isZero(buf.subarray(s, e)));
}

/** [start, end) runs of `unit`s where a and b differ. */
export function differingRuns(a: Buffer, b: Buffer, unit: number): Generator<[number, number]> {
  return unitRuns(a.length, unit, (s, e) => !a.subarray(s, e).equals(b.subarray(s, e)));
}

/** Does blockStatus say all of [offset, offset+length) reads as zeros? (cheap; false when unsure) */
export async function knownZero(device: BlockDevice, offset: number, length: number): Promise<boolean> {
  if (length <= 0) return true;
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const extents = await device.blockStatus(pos, end - pos);
    for (const e of extents) {
      if ((e.flags & EXTENT_ZERO) === 0) return false;
      pos += e.length;
    }
    if (extents.length === 0) return false;
  }
  return true;
}
