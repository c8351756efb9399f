/**
 * Bit-level helpers of AllocationBitmap (allocation-bitmap.ts), on one page of bitmap
 * bytes, LSB-first within each byte (docs/cow-format.md), and the BitmapSource that reads
 * a bitmap's pages from an open file. Pure except fileBitmapSource (synchronous pread).
 */
import { readSync } from 'node:fs';
import type { BitmapSource } from './allocation-bitmap.js';

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let v = b; v; v &= v - 1) n++;
  return n;
});

/** A BitmapSource reading `length` bytes at `offset` of an open file descriptor. */
export function fileBitmapSource(fd: number, offset: number, length: number, dataRanges?: ReadonlyArray<readonly [number, number]>): BitmapSource {
  return {
    dataRanges,
    read(at, target) {
      let done = 0;
      const want = Math.max(0, Math.min(target.length, length - at));
      while (done < want) {
        const n = readSync(fd, target, done, want - done, offset + at + done);
        if (n === 0) break; // past EOF: the rest stays zero
        done += n;
      }
    },
  };
}

const ZEROS = Buffer.alloc(64 * 1024);
export function isZero(buf: Buffer): boolean {
  for (let at = 0; at < buf.length; at += ZEROS.length) {
    const part = buf.subarray(at, Math.min(buf.length, at + ZEROS.length));
    if (!part.equals(ZEROS.subarray(0, part.length))) return false; // memcmp
  }
  return true;
}

/** First bit index in [from, to) whose value differs from `value`, or `to`. */
export function scanRun(page: Buffer, from: number, to: number, value: boolean): number {
  const full = value ? 0xff : 0x00;
  let b = from;
  while (b < to) {
    if ((b & 7) === 0 && b + 8 <= to && page[b >> 3] === full) {
      b += 8;
      continue;
    }
    if (((page[b >> 3]! & (1 << (b & 7))) !== 0) !== value) return b;
    b++;
  }
  return to;
}

/** Set bits [from, to) of one page; true if any changed. */
export function setBits(page: Buffer, from: number, to: number): boolean {
  let changed = false;
  let b = from;
  while (b < to) {
    const i = b >> 3;
    if ((b & 7) === 0 && b + 8 <= to) {
      if (page[i] !== 0xff) {
        page[i] = 0xff;
        changed = true;
      }
      b += 8;
      continue;
    }
    const mask = 1 << (b & 7);
    if ((page[i]! & mask) === 0) {
      page[i] = page[i]! | mask;
      changed = true;
    }
    b++;
  }
  return changed;
}

/** Set bits in [from, to) of one page. */
export function countBits(page: Buffer, from: number, to: number): number {
  let n = 0;
  let b = from;
  while (b < to && (b & 7) !== 0) {
    if (page[b >> 3]! & (1 << (b & 7))) n++;
    b++;
  }
  for (; b + 8 <= to; b += 8) n += POPCOUNT[page[b >> 3]!]!;
  for (; b < to; b++) if (page[b >> 3]! & (1 << (b & 7))) n++;
  return n;
}
