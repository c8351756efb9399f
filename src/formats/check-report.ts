/**
 * The vocabulary of `cownbd check`, shared by the formats' check() functions and the
 * check tool: findings with a severity, and the repairs that fix them. Also the byte
 * scanning helpers both overlay checks use (bounded memory on multi-GiB files).
 *
 *   corruption  data may be lost or the image is unusable      → exit 2
 *   leak        wasted or cosmetic (tail bits, garbage, length) → exit 3 (if no corruption)
 *   info        harmless, reported only
 */
import type { FileHandle } from 'node:fs/promises';
import { readFully, writeFully } from '../block/file-io.js';

export type Severity = 'corruption' | 'leak' | 'info';

export type FindingClass =
  | 'header'
  | 'file-length'
  | 'tail-bits'
  | 'padding'
  | 'lost-writes'
  | 'backing'
  | 'names'
  | 'image-file'
  | 'commit-incomplete'
  | 'unopenable';

export interface Finding {
  class: FindingClass;
  severity: Severity;
  message: string;
  repairable: boolean;
}

export interface Repair {
  finding: Finding;
  /** Apply to the image file, opened read-write. */
  apply(fh: FileHandle): Promise<void>;
}

export interface Collected {
  findings: Finding[];
  repairs: Repair[];
}

/**
 * Older versions created overlays in place (header, then extend, then sync): a crash in
 * between left a 0-byte or header-only file under the final name. Such a file holds no
 * guest data (nothing can have been written before creation finished), so say so.
 */
export const HALF_CREATED_HINT =
  'if this is an overlay whose creation was interrupted (cownbd before crash-safe creation wrote it in place), it holds no data: delete it and it will be created afresh';

/** The check cannot run to a verdict (unreadable file, ambiguous layout): exit 1. */
export class CouldNotCheck extends Error {}

export function corruption(c: Collected, cls: FindingClass, message: string): void {
  c.findings.push({ class: cls, severity: 'corruption', message, repairable: false });
}

/** Record a repairable finding together with its repair. */
export function repairable(c: Collected, cls: FindingClass, severity: Severity, message: string, apply: (fh: FileHandle) => Promise<void>): void {
  const finding: Finding = { class: cls, severity, message, repairable: true };
  c.findings.push(finding);
  c.repairs.push({ finding, apply });
}

const SCAN_CHUNK = 1 << 20;

/** Non-zero byte ranges [start, end) within [from, to) of the file, read in bounded chunks. */
export async function nonZeroRanges(fh: FileHandle, from: number, to: number): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  const buf = Buffer.alloc(Math.min(SCAN_CHUNK, Math.max(0, to - from)));
  for (let pos = from; pos < to; pos += buf.length) {
    const n = Math.min(buf.length, to - pos);
    const view = buf.subarray(0, n);
    await readFully(fh, pos, view);
    for (let i = 0; i < n; i++) {
      if (view[i] === 0) continue;
      const at = pos + i;
      const prev = out[out.length - 1];
      if (prev && prev[1] === at) prev[1] = at + 1;
      else out.push([at, at + 1]);
    }
  }
  return out;
}

export async function zeroRanges(fh: FileHandle, ranges: Array<[number, number]>): Promise<void> {
  for (const [s, e] of ranges) await writeFully(fh, s, Buffer.alloc(e - s));
}

export function fmtRanges(r: Array<[number, number]>): string {
  const shown = r.slice(0, 4).map(([s, e]) => (e - s === 1 ? `${s}` : `${s}..${e - 1}`));
  return r.length > 4 ? `${shown.join(', ')} and ${r.length - 4} more` : shown.join(', ');
}

/** Clear every bit >= `bit` of an LSB-first bitmap. */
export function clearBitsFrom(bytes: Buffer, bit: number): void {
  for (let b = bit; b < bytes.length * 8; b++) bytes[b >> 3] = bytes[b >> 3]! & ~(1 << (b & 7));
}
