/**
 * `cownbd check FILE [--json] [--repair]`: consistency check of an overlay's metadata,
 * like `qemu-img check`. Reads the file byte by byte with the formats' exported codecs
 * (it must work on files the driver refuses to open), and classifies every finding:
 *
 *   corruption  data may be lost or the image is unusable      → exit 2
 *   leak        wasted or cosmetic (tail bits, garbage, length) → exit 3 (if no corruption)
 *   info        harmless, reported only (e.g. UML's garbage after the path NUL,
 *               docs/cow-format.md#c10)
 *   could not check (unreadable file, ambiguous layout)        → exit 1
 *   no metadata (a raw image; qemu-img's "does not support checks") → exit 63
 *
 * A file named *.cow / *.add-cow without the magic is reported as a broken overlay (a
 * 0-byte one with the half-created hint), not checked as raw. After the metadata checks,
 * an overlay that still cannot be OPENED (backing cycle, unsupported backing format, an
 * image file that is a directory, a FIFO, a procfs file…) is corruption: `check` never
 * calls an image clean that `serve` and `info` refuse.
 *
 * --repair fixes only what is provably safe, and ONLY in the overlay's own metadata file
 * (never the backing file, never the add-cow image file, never data sectors):
 *   - clear tail bits (bits past the last sector/cluster; no reader uses them);
 *   - zero garbage in padding that no layout reads (never the v1/v2 bytes that hold
 *     "lost" bits, docs/cow-format.md#c11: they are evidence of real guest writes);
 *   - extend a short file to its full layout length (only adds zeros where reads already
 *     return zeros) or truncate bytes past the end of the data area / bitmap area.
 * After repairing, the file is checked again and the exit code reflects what is left.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import {
  addCowBitmapLength,
  addCowClusterCount,
  addCowMetadataLength,
  parseAddCowHeader,
  peekAddCowHeaderSize,
  type AddCowHeader,
} from '../formats/add-cow/add-cow-header.js';
import { checkDistinctFiles, resolveAddCowName } from '../formats/add-cow/add-cow-open.js';
import {
  checkBacking,
  cowGeometry,
  decodeCowHeader,
  detectCowLayout,
  isCowLayoutName,
  resolveBackingPath,
  statBacking,
  type CowGeometry,
  type CowHeader,
  type CowLayoutName,
} from '../formats/cow/index.js';
import { openImage, probeFormat, type ImageFormat } from '../formats/open-image.js';
import { HALF_CREATED_HINT } from '../formats/cow/cow-open.js';
import { FileIo, readFully, writeFully } from '../block/file-io.js';
import { AllocationBitmap } from '../formats/allocation-bitmap.js';
import { cowBitmapSource } from '../formats/cow/cow-open.js';
import { readJournal } from './commit-journal.js';
import { EXIT_CORRUPT, EXIT_ERROR, EXIT_LEAKS, EXIT_NO_METADATA, EXIT_OK } from './errors.js';
import { countBits } from './inspect.js';

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

export interface CheckJson {
  filename: string;
  format: string;
  /** clean | corrupt | leaks | error (could not check) | unsupported (no metadata: raw) */
  result: 'clean' | 'corrupt' | 'leaks' | 'error' | 'unsupported';
  exitCode: number;
  findings: Finding[];
  /** Findings fixed by --repair (empty without --repair). */
  repaired: Finding[];
  /** Set when the check could not run to the end. */
  error: string | null;
}

export interface CheckOptions {
  format?: ImageFormat;
  layout?: string;
  backingFile?: string;
  repair?: boolean;
}

interface Repair {
  finding: Finding;
  apply(fh: FileHandle): Promise<void>;
}

interface Collected {
  findings: Finding[];
  repairs: Repair[];
}

class CouldNotCheck extends Error {}

export async function runCheck(file: string, options: CheckOptions = {}): Promise<CheckJson> {
  let format: string = options.format ?? 'unknown';
  try {
    await requireCheckableFile(file);
    format = options.format ?? (await probeFormat(file));
    if (format === 'raw' && options.format === undefined) {
      const claimed = OVERLAY_NAME.exec(file)?.[1];
      if (claimed) return summarize(file, claimed, [await missingMagic(file, claimed)], [], null);
    }
    if (format === 'raw') {
      return { filename: file, format, result: 'unsupported', exitCode: EXIT_NO_METADATA, findings: [], repaired: [], error: `${file}: raw image: this format has no metadata to check` };
    }
    let collected = await collect(file, format as ImageFormat, options);
    let repaired: Finding[] = [];
    if (options.repair && collected.repairs.length > 0) {
      const fh = await open(file, 'r+');
      try {
        for (const r of collected.repairs) await r.apply(fh);
        await fh.sync();
      } finally {
        await fh.close();
      }
      repaired = collected.repairs.map((r) => r.finding);
      collected = await collect(file, format as ImageFormat, options);
    }
    return summarize(file, format, collected.findings, repaired, null);
  } catch (err) {
    const msg = err instanceof CouldNotCheck ? err.message : `${file}: ${(err as Error).message}`;
    return summarize(file, format, [], [], msg);
  }
}

/** stat, never open, first: a FIFO must not hang check, a missing file gets qemu-img's words. */
async function requireCheckableFile(file: string): Promise<void> {
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new CouldNotCheck(`Could not open '${file}': No such file or directory`);
    throw err;
  });
  if (!st.isFile() && !st.isBlockDevice()) throw new CouldNotCheck(`${file}: not a regular file or block device`);
}

function summarize(file: string, format: string, findings: Finding[], repaired: Finding[], error: string | null): CheckJson {
  let exitCode = EXIT_OK;
  let result: CheckJson['result'] = 'clean';
  if (error !== null) {
    exitCode = EXIT_ERROR;
    result = 'error';
  } else if (findings.some((f) => f.severity === 'corruption')) {
    exitCode = EXIT_CORRUPT;
    result = 'corrupt';
  } else if (findings.some((f) => f.severity === 'leak')) {
    exitCode = EXIT_LEAKS;
    result = 'leaks';
  }
  return { filename: file, format, result, exitCode, findings, repaired, error };
}

/** Names that say "overlay": such a file without the magic is a broken overlay, not raw. */
const OVERLAY_NAME = /\.(cow|add-cow)$/;

async function missingMagic(file: string, claimed: string): Promise<Finding> {
  const head = Buffer.alloc(8);
  const fh = await open(file, 'r');
  let length: number;
  try {
    length = (await fh.stat()).size;
    await fh.read(head, 0, 8, 0);
  } finally {
    await fh.close();
  }
  const what = length === 0 ? `is empty (0 bytes): no ${claimed} header; ${HALF_CREATED_HINT}` : `has no ${claimed} magic (${length} bytes, starting ${head.subarray(0, Math.min(8, length)).toString('hex')})`;
  return { class: 'header', severity: 'corruption', message: `${file}: named like a ${claimed} image but ${what}`, repairable: false };
}

/** The overlay must also open the way serve/info open it (backing chain, image file kinds). */
async function checkOpens(file: string, format: ImageFormat, options: CheckOptions, c: Collected): Promise<void> {
  if (c.findings.some((f) => f.severity === 'corruption')) return; // already not clean
  try {
    const dev = await openImage(file, { readOnly: true, format, layout: options.layout, backingFile: options.backingFile });
    await dev.close();
  } catch (err) {
    c.findings.push({ class: 'unopenable', severity: 'corruption', message: `${file}: cannot be opened: ${(err as Error).message}`, repairable: false });
  }
}

async function collect(file: string, format: ImageFormat, options: CheckOptions): Promise<Collected> {
  const c: Collected = { findings: [], repairs: [] };
  const journal = await readJournal(file).catch((err: Error) => {
    c.findings.push({ class: 'commit-incomplete', severity: 'corruption', message: err.message, repairable: false });
    return undefined;
  });
  if (journal) {
    c.findings.push({
      class: 'commit-incomplete',
      severity: 'corruption',
      message: `an in-place commit into "${journal.target}" started ${journal.started} did not finish: the backing file alone is partially updated (the view through ${file} is intact); run \`cownbd commit ${file} --to ${journal.target}\` again to finish it`,
      repairable: false,
    });
  }
  const fh = await open(file, 'r').catch((err: Error) => {
    throw new CouldNotCheck(`${file}: cannot open: ${err.message}`);
  });
  try {
    if (format === 'cow') await checkCow(file, fh, options, c, journal !== undefined);
    else await checkAddCow(file, fh, options, c);
  } finally {
    await fh.close();
  }
  await checkOpens(file, format, options, c);
  return c;
}

// ---- cow ---------------------------------------------------------------------------------

async function checkCow(file: string, fh: FileHandle, options: CheckOptions, c: Collected, commitPending: boolean): Promise<void> {
  const fileLength = (await fh.stat()).size;
  const head = Buffer.alloc(Math.min(4136, fileLength));
  await readFully(fh, 0, head);
  const corrupt = (cls: FindingClass, message: string): void => void c.findings.push({ class: cls, severity: 'corruption', message, repairable: false });

  let candidates: CowLayoutName[];
  try {
    if (options.layout !== undefined) {
      if (!isCowLayoutName(options.layout)) throw new CouldNotCheck(`layout "${options.layout}" unknown (known: v1, v2, v3, v3-broken, qemu-i386, qemu-x86_64)`);
      candidates = [options.layout];
    } else candidates = detectCowLayout(head);
  } catch (err) {
    if (err instanceof CouldNotCheck) throw err;
    return corrupt('header', `${file}: ${(err as Error).message}`);
  }
  const decoded: CowHeader[] = [];
  const errors: string[] = [];
  for (const l of candidates) {
    try {
      decoded.push(decodeCowHeader(head, l));
    } catch (err) {
      errors.push(`${l}: ${(err as Error).message}`);
    }
  }
  if (decoded.length === 0) return corrupt('header', `${file}: ${errors.join('; ')}`);
  let header = decoded[0]!;
  if (decoded.length > 1) {
    // Version 2: UML v2 vs QEMU layouts; only the backing file's size tells them apart (docs/cow-format.md#c1).
    const fits: CowHeader[] = [];
    for (const h of decoded) {
      const st = await statBacking(resolveBackingPath(h.layout, h.backingFile, file, options.backingFile)).catch(() => undefined);
      if (st && st.size === h.size && fileLength >= cowGeometry(h).bitmapOffset + cowGeometry(h).bitmapLength) fits.push(h);
    }
    if (fits.length !== 1) {
      throw new CouldNotCheck(
        `${file}: version-2 header fits ${fits.length === 0 ? 'no' : 'several'} layouts (${decoded.map((h) => h.layout).join(', ')}) against its backing file; pass --layout`,
      );
    }
    header = fits[0]!;
  }
  const g = cowGeometry(header);
  const qemu = header.layout.startsWith('qemu');
  // Streamed page by page (a 1 TiB overlay's bitmap is 256 MiB): every bit, tail included.
  const bitmap = new AllocationBitmap(g.bitmapLength * 8, g.bitmapLength, 64 * 1024, await cowBitmapSource(fh.fd, g, new FileIo().native));

  // Header sanity beyond what the decoder refuses.
  const f = headerFields(header.layout);
  const pathField = head.subarray(f.path, f.path + f.pathLength);
  const nul = pathField.indexOf(0);
  if (nul >= 0 && pathField.subarray(nul + 1).some((b) => b !== 0)) {
    const at = f.path + nul + 1;
    c.findings.push({ class: 'padding', severity: 'info', message: `non-zero bytes after the backing path's NUL (offsets ${at}..${f.path + f.pathLength - 1}); ignored by every reader (UML leaves memory there)`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => writeFully(w, at, Buffer.alloc(f.path + f.pathLength - at)) });
  }
  if (header.layout === 'v3-broken' && head.readUInt32BE(12) !== 0) {
    c.findings.push({ class: 'padding', severity: 'info', message: 'broken-v3 padding bytes 12..15 are non-zero (ignored)', repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => writeFully(w, 12, Buffer.alloc(4)) });
  }
  if (header.layout === 'v3' && head.readUInt32BE(28) !== 0) {
    c.findings.push({ class: 'header', severity: 'info', message: `cow_format (offset 28) is ${head.readUInt32BE(28)}, only 0 (COW_BITMAP) is defined; readers ignore it`, repairable: false });
  }

  // File length vs layout.
  const dataEnd = g.dataOffset + header.size;
  const virtualEnd = g.dataOffset + g.virtualSize;
  const bitmapEnd = g.bitmapOffset + g.bitmapLength;
  const allocatedPastEof = countAllocatedFrom(bitmap, g, Math.max(0, Math.floor((fileLength - g.dataOffset) / 512)));
  if (fileLength < bitmapEnd) {
    corrupt('file-length', `file length ${fileLength} ends inside the bitmap (${g.bitmapOffset}..${bitmapEnd - 1}): the bits of the missing bytes are lost`);
  } else if (allocatedPastEof > 0) {
    corrupt('file-length', `file length ${fileLength} is shorter than the data area: ${allocatedPastEof} allocated sector(s) lie past the end of the file (data offset ${g.dataOffset}) and read as zeros`);
  } else if (!qemu && fileLength < dataEnd) {
    c.findings.push({ class: 'file-length', severity: 'leak', message: `file length ${fileLength} is shorter than the ${header.layout} layout length ${dataEnd} (data offset ${g.dataOffset} + size ${header.size}); no allocated sector is affected`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => w.truncate(dataEnd) });
  }
  if (fileLength > virtualEnd) {
    c.findings.push({ class: 'file-length', severity: 'leak', message: `file length ${fileLength} exceeds the end of the data area ${virtualEnd} by ${fileLength - virtualEnd} bytes that no reader uses`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => w.truncate(virtualEnd) });
  }

  // Tail bits: bits inside bitmapLength but past the last representable sector.
  const tail = bitmap.countSet(g.representableSectors);
  if (tail > 0) {
    c.findings.push({ class: 'tail-bits', severity: 'leak', message: `${tail} bit(s) set past the last sector (${g.representableSectors} sectors, bitmap ${g.bitmapLength} bytes at ${g.bitmapOffset}); no reader uses them`, repairable: true });
    const first = g.representableSectors >> 3;
    const fixed = Buffer.alloc(g.bitmapLength - first);
    await readFully(fh, g.bitmapOffset + first, fixed);
    clearFrom(fixed, g.representableSectors - first * 8);
    c.repairs.push({ finding: last(c), apply: (w) => writeFully(w, g.bitmapOffset + first, fixed) });
  }

  // Padding: header end → bitmap, bitmap end → data offset.
  const pad1 = await nonZeroRanges(fh, header.headerSize, Math.min(g.bitmapOffset, fileLength));
  if (pad1.length > 0) {
    c.findings.push({ class: 'padding', severity: 'leak', message: `garbage between the header and the bitmap (offsets ${fmtRanges(pad1)}); ignored by readers`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => zeroRanges(w, pad1) });
  }
  let pad2Start = bitmapEnd;
  if ((header.layout === 'v1' || header.layout === 'v2') && g.representableSectors < g.sectors) {
    // docs/cow-format.md#c11: UML stores the bits of the last sectors past bitmap_len and never reads them back.
    const lostBytes = Math.ceil(g.sectors / 8) - g.bitmapLength;
    const lostBuf = Buffer.alloc(lostBytes + g.bitmapLength);
    await readFully(fh, g.bitmapOffset, lostBuf);
    let lost = 0;
    for (let s = g.representableSectors; s < g.sectors; s++) if (lostBuf[s >> 3]! & (1 << (s & 7))) lost++;
    if (lost > 0) {
      corrupt('lost-writes', `${lost} bit(s) for sectors ${g.representableSectors}..${g.sectors - 1} were written past bitmap_len (${g.bitmapLength}) by UML's v1/v2 rounding bug (its bitmap is one byte short): UML and uml_moo never read them back, so those writes are invisible; convert the image to keep them`);
    }
    pad2Start = bitmapEnd + lostBytes; // never touch the bytes that may hold those bits
  }
  const pad2 = await nonZeroRanges(fh, pad2Start, Math.min(g.dataOffset, fileLength));
  if (pad2.length > 0) {
    c.findings.push({ class: 'padding', severity: 'leak', message: `garbage between the bitmap and the data area (offsets ${fmtRanges(pad2)}); ignored by readers`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => zeroRanges(w, pad2) });
  }

  // Backing file identity (size, then mtime, as UML does).
  const backing = resolveBackingPath(header.layout, header.backingFile, file, options.backingFile);
  let st;
  try {
    st = await statBacking(backing);
  } catch (err) {
    return corrupt('backing', `${(err as Error).message} (stored as "${header.backingFile}")`);
  }
  try {
    checkBacking(header, st, backing, { ignoreMtime: commitPending });
  } catch (err) {
    corrupt('backing', (err as Error).message);
  }
  if (!qemu && (st.mtime < 0 || st.mtime >= 2 ** 32)) {
    corrupt('backing', `backing file "${backing}" mtime ${st.mtime} is outside the header's 32-bit range: UML and uml_moo can never validate this COW`);
  }
}

function headerFields(layout: CowLayoutName): { path: number; pathLength: number } {
  switch (layout) {
    case 'v1':
      return { path: 8, pathLength: 256 };
    case 'v2':
      return { path: 8, pathLength: 4096 };
    case 'v3':
      return { path: 32, pathLength: 4096 };
    case 'v3-broken':
      return { path: 36, pathLength: 4096 };
    default:
      return { path: 8, pathLength: 1024 };
  }
}

/** Set bits for sectors >= fromSector (and < representableSectors). */
function countAllocatedFrom(bitmap: AllocationBitmap, g: CowGeometry, fromSector: number): number {
  if (fromSector >= g.representableSectors) return 0;
  return bitmap.countSet(fromSector, g.representableSectors);
}

function clearFrom(bytes: Buffer, bit: number): void {
  for (let b = bit; b < bytes.length * 8; b++) bytes[b >> 3] = bytes[b >> 3]! & ~(1 << (b & 7));
}

// ---- add-cow -----------------------------------------------------------------------------

async function checkAddCow(file: string, fh: FileHandle, options: CheckOptions, c: Collected): Promise<void> {
  const corrupt = (cls: FindingClass, message: string): void => void c.findings.push({ class: cls, severity: 'corruption', message, repairable: false });
  const fileLength = (await fh.stat()).size;
  let header: AddCowHeader;
  try {
    const fixed = Buffer.alloc(Math.min(76, fileLength));
    await readFully(fh, 0, fixed);
    const hs = peekAddCowHeaderSize(fixed);
    if (fileLength < hs) throw new Error(`file too short: ${fileLength} bytes, the header alone is ${hs} bytes`);
    const full = Buffer.alloc(hs);
    await readFully(fh, 0, full);
    header = parseAddCowHeader(full);
  } catch (err) {
    return corrupt('header', `${file}: ${(err as Error).message}`);
  }
  const imagePath = resolveAddCowName(file, header.imageName);
  const backingPath = options.backingFile ?? (header.backingName === undefined ? undefined : resolveAddCowName(file, header.backingName));
  try {
    await checkDistinctFiles(file, imagePath, backingPath);
  } catch (err) {
    corrupt('names', (err as Error).message);
  }
  if (header.imageFormat !== 'raw') corrupt('image-file', `image file format "${header.imageFormat}" is not supported (only raw)`);
  const imageSt = await stat(imagePath).catch(() => undefined);
  if (!imageSt) return corrupt('image-file', `image file "${header.imageName}" (${imagePath}) does not exist`);
  const size = Math.floor(imageSt.size / 512) * 512;
  if (imageSt.size !== size) {
    c.findings.push({ class: 'image-file', severity: 'info', message: `image file length ${imageSt.size} is not a multiple of 512; the last ${imageSt.size - size} bytes are not part of the disk`, repairable: false });
  }
  if (backingPath !== undefined && !header.allAllocated) {
    if (header.backingFormat === '' ) corrupt('names', 'a backing file is named but its format (bytes 44..59) is empty');
    if (!(await stat(backingPath).catch(() => undefined))) corrupt('backing', `backing file "${header.backingName ?? backingPath}" (${backingPath}) does not exist`);
  }

  const clusters = addCowClusterCount(size, header.clusterBits);
  const bitmapLength = addCowBitmapLength(size, header.clusterBits);
  const expected = addCowMetadataLength(size, header.clusterBits);
  const bitmapEnd = header.headerSize + bitmapLength;
  const bitmap = Buffer.alloc(bitmapLength);
  await readFully(fh, header.headerSize, bitmap);

  if (fileLength < bitmapEnd) {
    c.findings.push({ class: 'file-length', severity: 'leak', message: `metadata file length ${fileLength} ends before the bitmap end ${bitmapEnd}; the missing bits read as unallocated (the image file may have grown)`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => w.truncate(expected) });
  } else if (fileLength < expected) {
    c.findings.push({ class: 'file-length', severity: 'leak', message: `metadata file length ${fileLength} is shorter than the created length ${expected} (header ${header.headerSize} + bitmap rounded to the cluster size)`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => w.truncate(expected) });
  } else if (fileLength > expected) {
    c.findings.push({ class: 'file-length', severity: 'leak', message: `metadata file length ${fileLength} exceeds the layout length ${expected} by ${fileLength - expected} bytes that no reader uses`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => w.truncate(expected) });
  }
  const tail = countBits(bitmap, bitmapLength * 8) - countBits(bitmap, clusters);
  if (tail > 0) {
    c.findings.push({ class: 'tail-bits', severity: 'leak', message: `${tail} bit(s) set past the last cluster (${clusters} clusters of ${header.clusterSize} bytes); ignored on read`, repairable: true });
    const fixed = Buffer.from(bitmap);
    clearFrom(fixed, clusters);
    const first = clusters >> 3;
    c.repairs.push({ finding: last(c), apply: (w) => writeFully(w, header.headerSize + first, fixed.subarray(first)) });
  }
  const pad = await nonZeroRanges(fh, bitmapEnd, Math.min(expected, fileLength));
  if (pad.length > 0) {
    c.findings.push({ class: 'padding', severity: 'leak', message: `non-zero bytes after the bitmap (offsets ${fmtRanges(pad)}); unused bytes must be 0`, repairable: true });
    c.repairs.push({ finding: last(c), apply: (w) => zeroRanges(w, pad) });
  }
  if (header.allAllocated && countBits(bitmap, clusters) < clusters) {
    c.findings.push({ class: 'header', severity: 'info', message: `ALL_ALLOCATED is set: the bitmap (${countBits(bitmap, clusters)} of ${clusters} bits set) and the backing file are ignored`, repairable: false });
  }
}

// ---- helpers -------------------------------------------------------------------------

function last(c: Collected): Finding {
  return c.findings[c.findings.length - 1]!;
}

const SCAN_CHUNK = 1 << 20;

/** Non-zero byte ranges [start, end) within [from, to) of the file, read in bounded chunks. */
async function nonZeroRanges(fh: FileHandle, from: number, to: number): Promise<Array<[number, number]>> {
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

async function zeroRanges(fh: FileHandle, ranges: Array<[number, number]>): Promise<void> {
  for (const [s, e] of ranges) await writeFully(fh, s, Buffer.alloc(e - s));
}

function fmtRanges(r: Array<[number, number]>): string {
  const shown = r.slice(0, 4).map(([s, e]) => (e - s === 1 ? `${s}` : `${s}..${e - 1}`));
  return r.length > 4 ? `${shown.join(', ')} and ${r.length - 4} more` : shown.join(', ');
}

export function formatCheckText(r: CheckJson): string {
  const lines: string[] = [];
  if (r.error) return `${r.error}\nCheck could not be completed.\n`;
  for (const f of r.repaired) lines.push(`Repaired: ${f.class}: ${f.message}`);
  for (const f of r.findings) {
    const tag = f.severity === 'corruption' ? 'ERROR' : f.severity === 'leak' ? 'Leaked/cosmetic' : 'Note';
    lines.push(`${tag}: ${f.class}: ${f.message}${f.repairable && f.severity !== 'info' ? ' (fixable with --repair)' : ''}`);
  }
  const counts = (s: Severity): number => r.findings.filter((f) => f.severity === s).length;
  if (r.result === 'clean') lines.push('No errors were found on the image.');
  else lines.push(`${counts('corruption')} errors and ${counts('leak')} leaked/cosmetic issues were found on the image.`);
  return `${lines.join('\n')}\n`;
}
