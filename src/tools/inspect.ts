/**
 * Offline inspection of ONE image file (raw, cow in every layout, add-cow) without
 * opening a device stack, so it works on images whose backing file is missing or no
 * longer matches: `info` reports that instead of failing. Shared by info and check.
 *
 * cow: inspectCowFile (the driver's own parser) first with backing validation; if the
 * backing is missing or mismatched we re-read without validation and run the size/mtime
 * checks here, one by one, to report each result separately (UML's order and wording).
 * A version-2 header that fits several layouts without its backing file is an error
 * naming the candidates (pass --layout).
 */
import { isSnapshotLayer } from '../formats/cow/cow-layers.js';
import { stat } from 'node:fs/promises';
import type { FileIo } from '../block/file-io.js';
import { inspectAddCow, type AddCowInspection } from '../formats/add-cow/index.js';
import {
  checkBacking,
  CowBackingError,
  inspectCowFile,
  statBacking,
  type BackingStat,
  type CowGeometry,
  type CowHeader,
} from '../formats/cow/index.js';
import { openImage, probeFormat, type ImageFormat } from '../formats/open-image.js';
import { readJournal, type CommitJournal } from './commit-journal.js';
import { isObjectStoreUri } from '../objectstore/uri.js';

export interface InspectOptions {
  /** Force the format of this file (default: magic). */
  format?: ImageFormat;
  /** cow: layout override (v1, v2, v3, v3-broken, qemu-i386, qemu-x86_64). */
  layout?: string;
  /** Backing path override (cow: like uml_moo -b; add-cow: instead of the stored name). */
  backingFile?: string;
  /** Backing format override (cow default raw; add-cow default: recorded). */
  backingFormat?: ImageFormat;
  /** I/O policy for the devices opened to measure backing sizes. */
  io?: FileIo;
  /** size + mtime of an s3:// backing (its manifest); without it such a backing reports as missing. */
  remoteStat?: (address: string) => Promise<BackingStat>;
}

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

export interface CowLayerDetail {
  readonly header: CowHeader;
  readonly geometry: CowGeometry;
  readonly allocatedSectors: number;
}

export interface LayerInspection {
  readonly path: string;
  readonly format: ImageFormat;
  readonly virtualSize: number;
  readonly file: FileSizes;
  /** Bytes of the virtual disk this layer holds itself (raw: its file's actual size). */
  readonly allocatedBytes: number;
  readonly backing: BackingReport | null;
  readonly cow?: CowLayerDetail;
  readonly addCow?: AddCowInspection & { readonly imageFile: FileSizes };
  readonly commitJournal: CommitJournal | null;
}

export async function fileSizes(path: string): Promise<FileSizes> {
  const st = await stat(path);
  return { apparentSize: st.size, actualSize: st.blocks * 512 };
}

export async function inspectLayer(path: string, options: InspectOptions = {}): Promise<LayerInspection> {
  const format = options.format ?? (await probeFormat(path));
  const file = await fileSizes(path);
  const commitJournal = format === 'raw' ? null : ((await readJournal(path)) ?? null);
  switch (format) {
    case 'raw':
      return { path, format, virtualSize: file.apparentSize, file, allocatedBytes: file.actualSize, backing: null, commitJournal };
    case 'cow':
      return inspectCowLayer(path, options, file, commitJournal);
    case 'add-cow':
      return inspectAddCowLayer(path, options, file, commitJournal);
  }
}

async function inspectCowLayer(path: string, options: InspectOptions, file: FileSizes, commitJournal: CommitJournal | null): Promise<LayerInspection> {
  const base = { layout: options.layout, backingFile: options.backingFile };
  let insp;
  try {
    insp = await inspectCowFile(path, { ...base, validateBacking: true });
  } catch (err) {
    if (!(err instanceof CowBackingError)) throw err;
    insp = await inspectCowFile(path, { ...base, validateBacking: false });
  }
  const { header, geometry } = insp;
  const { allocatedSectors } = insp;
  // A snapshot layer (NAME.snap-N.cow) is cow by its name (formats/cow/cow-layers.ts).
  const backingFormat = isSnapshotLayer(insp.backingFile.resolved) ? 'cow' : (options.backingFormat ?? 'raw');
  const backing = await checkCowBacking(header, insp.backingFile.stored, insp.backingFile.resolved, backingFormat, options.remoteStat);
  return {
    path,
    format: 'cow',
    virtualSize: geometry.virtualSize,
    file,
    allocatedBytes: allocatedSectors * 512,
    backing,
    cow: { header, geometry, allocatedSectors },
    commitJournal,
  };
}

async function checkCowBacking(
  header: CowHeader,
  stored: string,
  resolved: string,
  format: ImageFormat,
  remoteStat?: (address: string) => Promise<BackingStat>,
): Promise<BackingReport> {
  const qemu = header.layout.startsWith('qemu');
  const common = { stored, resolved, format, expectedSize: header.size, expectedMtime: header.mtime };
  let st;
  try {
    st = isObjectStoreUri(resolved) && remoteStat ? await remoteStat(resolved) : await statBacking(resolved);
  } catch (err) {
    return {
      ...common,
      exists: false,
      size: null,
      sizeCheck: 'missing',
      actualMtime: null,
      mtimeCheck: 'missing',
      message: (err as Error).message,
    };
  }
  const size = format === 'raw' || isObjectStoreUri(resolved) ? st.size : await deviceSize(resolved, format).catch(() => null);
  let message: string | null = null;
  let sizeCheck: CheckResult = 'ok';
  let mtimeCheck: CheckResult = qemu ? 'not-applicable' : 'ok';
  try {
    checkBacking(header, st, resolved, { ignoreMtime: true, sizeOverride: size ?? undefined });
  } catch (err) {
    sizeCheck = 'mismatch';
    message = (err as Error).message;
  }
  if (!qemu && header.mtime !== st.mtime) {
    mtimeCheck = 'mismatch';
    message ??= `mtime mismatch (${header.mtime} vs ${st.mtime}) of COW header vs backing file "${resolved}"`;
  }
  return { ...common, exists: true, size, sizeCheck, actualMtime: st.mtime, mtimeCheck, message };
}

async function inspectAddCowLayer(path: string, options: InspectOptions, file: FileSizes, commitJournal: CommitJournal | null): Promise<LayerInspection> {
  const insp = await inspectAddCow(path);
  const imageFile = await fileSizes(insp.imagePath);
  const h = insp.header;
  let backing: BackingReport | null = null;
  const resolved = options.backingFile ?? insp.backingPath;
  if (resolved !== undefined) {
    const format = options.backingFormat ?? (h.backingFormat || null);
    const remote = isObjectStoreUri(resolved) && options.remoteStat ? await options.remoteStat(resolved).catch(() => undefined) : undefined;
    const st = remote ?? (await stat(resolved).catch(() => undefined));
    let size: number | null = null;
    let message: string | null = null;
    if (!st) message = `backing file "${resolved}" does not exist`;
    else if (format === null) message = 'backing file format is empty in the header (never probed; pass --backing-format)';
    else if (remote) size = remote.size;
    else {
      size = await deviceSize(resolved, format as ImageFormat).catch((err: Error) => {
        message = `backing file "${resolved}" cannot be opened as ${format}: ${err.message}`;
        return null;
      });
    }
    backing = {
      stored: h.backingName ?? null,
      resolved,
      format,
      exists: st !== undefined,
      size,
      // add-cow has no size/mtime identity check: the image may be larger than the backing (docs/add-cow-format.md#a2).
      expectedSize: null,
      sizeCheck: st ? 'not-applicable' : 'missing',
      expectedMtime: null,
      actualMtime: null,
      mtimeCheck: st ? 'not-applicable' : 'missing',
      message,
    };
  }
  return {
    path,
    format: 'add-cow',
    virtualSize: insp.virtualSize,
    file,
    allocatedBytes: insp.allocatedBytes,
    backing,
    addCow: { ...insp, imageFile },
    commitJournal,
  };
}

async function deviceSize(path: string, format: ImageFormat): Promise<number> {
  const dev = await openImage(path, { readOnly: true, format });
  try {
    return dev.size;
  } finally {
    await dev.close();
  }
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

/** The backing layer to inspect next in a chain (path + format), or undefined at the bottom. */
export function nextLayer(l: LayerInspection): { path: string; format: ImageFormat } | undefined {
  if (!l.backing || !l.backing.resolved || !l.backing.exists || !l.backing.format) return undefined;
  if (l.addCow?.header.allAllocated) return undefined;
  return { path: l.backing.resolved, format: l.backing.format as ImageFormat };
}
