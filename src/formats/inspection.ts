/**
 * What `info` learns about ONE image file without opening a device stack (so it works on
 * images whose backing file is missing or changed: that is reported, not fatal). Each
 * format record's inspect() fills a LayerInspection; the info tool prints it.
 */
import { stat } from 'node:fs/promises';
import { quotedPath } from '../util/quoted-path.js';

export interface FileSizes {
  /** st_size */
  readonly apparentSize: number;
  /** st_blocks * 512: what the file occupies on disk. */
  readonly actualSize: number;
}

export type CheckResult = 'ok' | 'mismatch' | 'missing' | 'not-applicable' | 'not-checked';

export interface BackingReport {
  /** As stored in the header (null when the layer records no backing file). */
  readonly stored: string | null;
  /** Absolute path it resolves to (after any override). */
  readonly resolved: string | null;
  readonly format: string | null;
  readonly exists: boolean;
  /** Size of the backing device (file size for raw, virtual size otherwise). */
  readonly size: number | null;
  readonly expectedSize: number | null;
  readonly sizeCheck: CheckResult;
  readonly expectedMtime: number | null;
  readonly actualMtime: number | null;
  readonly mtimeCheck: CheckResult;
  /** The first failed check, in UML's wording. */
  readonly message: string | null;
}

/** A format's own part of `info`: the JSON object under `key` and its text lines. */
export interface InfoSection {
  readonly key: string;
  readonly json: Record<string, unknown>;
  readonly text: ReadonlyArray<readonly [string, string | number]>;
}

export interface LayerInspection {
  readonly path: string;
  readonly format: string;
  readonly virtualSize: number;
  readonly file: FileSizes;
  /** Bytes of the virtual disk this layer holds itself (raw: its file's actual size). */
  readonly allocatedBytes: number;
  readonly backing: BackingReport | null;
  readonly section?: InfoSection;
  /** The layer below, for --backing-chain (undefined at the bottom or when unusable). */
  readonly next?: { readonly path: string; readonly format: string };
}

export async function fileSizes(path: string): Promise<FileSizes> {
  const st = await stat(path);
  return { apparentSize: st.size, actualSize: st.blocks * 512 };
}

/** The usual `next`: the backing when it exists and its format is known. */
export function nextOf(backing: BackingReport | null): LayerInspection['next'] {
  if (!backing || !backing.resolved || !backing.exists || !backing.format) return undefined;
  return { path: backing.resolved, format: backing.format };
}

/** Set bits among the first `bits` bits of an LSB-first bitmap. */
export function countBits(bytes: Buffer, bits: number): number {
  let n = 0;
  const whole = Math.min(bytes.length, Math.floor(bits / 8));
  for (let i = 0; i < whole; i++) n += POPCOUNT[bytes[i]!]!;
  for (let b = whole * 8; b < bits && b >> 3 < bytes.length; b++) if (bytes[b >> 3]! & (1 << (b & 7))) n++;
  return n;
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, i) => {
  let c = 0;
  for (let v = i; v; v >>= 1) c += v & 1;
  return c;
});

/**
 * The backing report of a format whose header names the backing file and its format but
 * records no size or mtime to compare (add-cow, qcow2): does it exist, and does it open as
 * that format (`sizeOf`, never a probe). `exists` is the stat (or the object store's answer).
 */
export async function recordedBackingReport(
  stored: string | null,
  resolved: string,
  format: string | null,
  exists: boolean,
  formatMissing: string,
  sizeOf: (format: string) => Promise<number>,
): Promise<BackingReport> {
  let size: number | null = null;
  let message: string | null = null;
  if (!exists) message = `backing file ${quotedPath(resolved)} does not exist`;
  else if (format === null) message = `${formatMissing} (never probed; pass --backing-format)`;
  else {
    size = await sizeOf(format).catch((err: Error) => {
      message = `backing file ${quotedPath(resolved)} cannot be opened as ${format}: ${err.message}`;
      return null;
    });
  }
  const check = exists ? 'not-applicable' : 'missing';
  return { stored, resolved, format, exists, size, expectedSize: null, sizeCheck: check, expectedMtime: null, actualMtime: null, mtimeCheck: check, message };
}
