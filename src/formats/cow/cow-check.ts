/**
 * `cownbd check` for cow files: reads the file byte by byte with the header codecs (it
 * must work on files the driver refuses to open) and reports, in this order: the header
 * (layout choice, garbage the readers ignore), the file length against the layout, tail
 * bits, padding garbage, bits lost to the v1/v2 rounding bug, and the backing identity.
 * Repairs touch only the cow file's own metadata: never data sectors, never the bytes
 * that may hold lost bits (evidence of real guest writes), never the backing file.
 * Facts: docs/cow-format.md.
 */
import type { FileHandle } from 'node:fs/promises';
import { readFully, writeFully } from '../../block/file-io.js';
import {
  clearBitsFrom,
  corruption,
  CouldNotCheck,
  fmtRanges,
  nonZeroRanges,
  repairable,
  zeroRanges,
  type Collected,
} from '../check-report.js';
import type { CheckRequest } from '../format-record.js';
import { nativeFs } from '../../block/native-fs.js';
import { AllocationBitmap } from '../allocation-bitmap.js';
import { checkBacking, resolveBackingPath, statBacking } from './cow-backing.js';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { COW_MAX_HEADER_SIZE, cowPathField, decodeCowHeader, detectCowLayout, isCowLayoutName, type CowHeader, type CowLayoutName } from './cow-header.js';
import { cowGeometry, type CowGeometry } from './cow-layout.js';
import { cowVirtualSize, isSnapshotLayer } from './cow-layers.js';
import { cowBitmapSource } from './cow-open.js';

interface Subject {
  readonly file: string;
  readonly fh: FileHandle;
  readonly fileLength: number;
  readonly head: Buffer;
  readonly header: CowHeader;
  readonly g: CowGeometry;
  /** Streamed page by page (a 1 TiB overlay's bitmap is 256 MiB): every bit the file holds, tail included. */
  readonly bitmap: AllocationBitmap;
}

export async function checkCow(file: string, fh: FileHandle, req: CheckRequest, c: Collected): Promise<void> {
  const fileLength = (await fh.stat()).size;
  const head = Buffer.alloc(Math.min(COW_MAX_HEADER_SIZE, fileLength));
  await readFully(fh, 0, head);
  const header = await chooseHeader(file, head, fileLength, req, c);
  if (!header) return;
  const g = cowGeometry(header);
  // Only the bitmap bytes the file holds are scanned: past its end every bit reads as 0
  // anyway, and the header's size field alone must not set the work or the memory (a flipped
  // bit in a 1 MB file's size asked for a 1 GiB bitmap, or 8 TiB of pages to stream).
  const held = Math.max(0, Math.min(g.bitmapLength, fileLength - g.bitmapOffset));
  const bitmap = new AllocationBitmap(held * 8, held, 64 * 1024, await cowBitmapSource(fh.fd, { ...g, bitmapLength: held }, nativeFs));
  const s: Subject = { file, fh, fileLength, head, header, g, bitmap };
  checkHeaderGarbage(s, c);
  checkFileLength(s, c);
  await checkTailBits(s, c);
  await checkPadding(s, c);
  await checkBackingIdentity(s, req, c);
}

/** The header, or undefined after recording why there is none. */
async function chooseHeader(file: string, head: Buffer, fileLength: number, req: CheckRequest, c: Collected): Promise<CowHeader | undefined> {
  let candidates: CowLayoutName[];
  try {
    if (req.layout !== undefined) {
      if (!isCowLayoutName(req.layout)) throw new CouldNotCheck(`layout "${req.layout}" unknown (known: v1, v2, v3, v3-broken, qemu-i386, qemu-x86_64)`);
      candidates = [req.layout];
    } else candidates = detectCowLayout(head);
  } catch (err) {
    if (err instanceof CouldNotCheck) throw err;
    corruption(c, 'header', `${file}: ${(err as Error).message}`);
    return undefined;
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
  if (decoded.length === 0) {
    corruption(c, 'header', `${file}: ${errors.join('; ')}`);
    return undefined;
  }
  if (decoded.length === 1) return decoded[0];
  // Version 2: UML v2 vs QEMU layouts; only the backing file's size tells them apart (docs/cow-format.md#c1).
  const fits: CowHeader[] = [];
  for (const h of decoded) {
    const st = await statBacking(resolveBackingPath(h.layout, h.backingFile, file, req.backingFile)).catch(() => undefined);
    if (st && st.size === h.size && fileLength >= cowGeometry(h).bitmapOffset + cowGeometry(h).bitmapLength) fits.push(h);
  }
  if (fits.length !== 1) {
    throw new CouldNotCheck(
      `${file}: version-2 header fits ${fits.length === 0 ? 'no' : 'several'} layouts (${decoded.map((h) => h.layout).join(', ')}) against its backing file; pass --layout`,
    );
  }
  return fits[0];
}

/** Bytes every reader ignores: after the path's NUL, broken-v3 padding, cow_format. */
function checkHeaderGarbage({ head, header }: Subject, c: Collected): void {
  const f = cowPathField(header.layout);
  const pathField = head.subarray(f.offset, f.offset + f.length);
  const nul = pathField.indexOf(0);
  if (nul >= 0 && pathField.subarray(nul + 1).some((b) => b !== 0)) {
    const at = f.offset + nul + 1;
    repairable(c, 'padding', 'info', `non-zero bytes after the backing path's NUL (offsets ${at}..${f.offset + f.length - 1}); ignored by every reader (UML leaves memory there)`, (w) =>
      writeFully(w, at, Buffer.alloc(f.offset + f.length - at)),
    );
  }
  if (header.layout === 'v3-broken' && head.readUInt32BE(12) !== 0) {
    repairable(c, 'padding', 'info', 'broken-v3 padding bytes 12..15 are non-zero (ignored)', (w) => writeFully(w, 12, Buffer.alloc(4)));
  }
  if (header.layout === 'v3' && head.readUInt32BE(28) !== 0) {
    c.findings.push({ class: 'header', severity: 'info', message: `cow_format (offset 28) is ${head.readUInt32BE(28)}, only 0 (COW_BITMAP) is defined; readers ignore it`, repairable: false });
  }
}

function checkFileLength({ fileLength, header, g, bitmap }: Subject, c: Collected): void {
  const qemu = header.layout.startsWith('qemu');
  const dataEnd = g.dataOffset + header.size;
  const virtualEnd = g.dataOffset + g.virtualSize;
  const bitmapEnd = g.bitmapOffset + g.bitmapLength;
  const allocatedPastEof = countAllocatedFrom(bitmap, g, Math.max(0, Math.floor((fileLength - g.dataOffset) / 512)));
  if (fileLength < bitmapEnd) {
    corruption(
      c,
      'file-length',
      `file length ${fileLength} ends inside the bitmap (${g.bitmapOffset}..${bitmapEnd - 1}) that the header's size field (${header.size} bytes, ${g.sectors} sectors) calls for: the size field is wrong, or the bits of the missing bytes are lost`,
    );
  } else if (allocatedPastEof > 0) {
    corruption(c, 'file-length', `file length ${fileLength} is shorter than the data area: ${allocatedPastEof} allocated sector(s) lie past the end of the file (data offset ${g.dataOffset}) and read as zeros`);
  } else if (!qemu && fileLength < dataEnd) {
    repairable(c, 'file-length', 'leak', `file length ${fileLength} is shorter than the ${header.layout} layout length ${dataEnd} (data offset ${g.dataOffset} + size ${header.size}); no allocated sector is affected`, (w) => w.truncate(dataEnd));
  }
  if (fileLength > virtualEnd) {
    repairable(c, 'file-length', 'leak', `file length ${fileLength} exceeds the end of the data area ${virtualEnd} by ${fileLength - virtualEnd} bytes that no reader uses`, (w) => w.truncate(virtualEnd));
  }
}

/** Bits inside bitmapLength but past the last representable sector. */
async function checkTailBits({ fh, g, bitmap }: Subject, c: Collected): Promise<void> {
  const tail = bitmap.countSet(g.representableSectors);
  if (tail === 0) return;
  const first = Math.floor(g.representableSectors / 8); // not >> 3: past 2^31 sectors it wraps
  const fixed = Buffer.alloc(g.bitmapLength - first);
  await readFully(fh, g.bitmapOffset + first, fixed);
  clearBitsFrom(fixed, g.representableSectors - first * 8);
  repairable(c, 'tail-bits', 'leak', `${tail} bit(s) set past the last sector (${g.representableSectors} sectors, bitmap ${g.bitmapLength} bytes at ${g.bitmapOffset}); no reader uses them`, (w) =>
    writeFully(w, g.bitmapOffset + first, fixed),
  );
}

/** Header end → bitmap, bitmap end → data offset; never the bytes that hold lost bits. */
async function checkPadding({ fh, fileLength, header, g }: Subject, c: Collected): Promise<void> {
  const bitmapEnd = g.bitmapOffset + g.bitmapLength;
  const pad1 = await nonZeroRanges(fh, header.headerSize, Math.min(g.bitmapOffset, fileLength));
  if (pad1.length > 0) {
    repairable(c, 'padding', 'leak', `garbage between the header and the bitmap (offsets ${fmtRanges(pad1)}); ignored by readers`, (w) => zeroRanges(w, pad1));
  }
  let pad2Start = bitmapEnd;
  if ((header.layout === 'v1' || header.layout === 'v2') && g.representableSectors < g.sectors) {
    pad2Start = bitmapEnd + (await checkLostWrites(fh, g, c));
  }
  const pad2 = await nonZeroRanges(fh, pad2Start, Math.min(g.dataOffset, fileLength));
  if (pad2.length > 0) {
    repairable(c, 'padding', 'leak', `garbage between the bitmap and the data area (offsets ${fmtRanges(pad2)}); ignored by readers`, (w) => zeroRanges(w, pad2));
  }
}

/**
 * UML's v1/v2 rounding bug stores the bits of the last sectors past bitmap_len and never
 * reads them back (docs/cow-format.md#c11). Returns how many bytes past the bitmap hold them.
 */
async function checkLostWrites(fh: FileHandle, g: CowGeometry, c: Collected): Promise<number> {
  const lostBytes = Math.ceil(g.sectors / 8) - g.bitmapLength;
  // Only the bytes holding those bits (one or two), never the whole bitmap: its length comes
  // from the header and may be absurd.
  // (Division, not >> 3: sector numbers pass 2^31 on disks over 1 TiB.)
  const first = Math.floor(g.representableSectors / 8);
  const lostBuf = Buffer.alloc(Math.ceil(g.sectors / 8) - first);
  await readFully(fh, g.bitmapOffset + first, lostBuf);
  let lost = 0;
  for (let s = g.representableSectors; s < g.sectors; s++) if (lostBuf[Math.floor(s / 8) - first]! & (1 << (s % 8))) lost++;
  if (lost > 0) {
    corruption(
      c,
      'lost-writes',
      `${lost} bit(s) for sectors ${g.representableSectors}..${g.sectors - 1} were written past bitmap_len (${g.bitmapLength}) by UML's v1/v2 rounding bug (its bitmap is one byte short): UML and uml_moo never read them back, so those writes are invisible; convert the image to keep them`,
    );
  }
  return lostBytes;
}

/**
 * Backing file identity (size, then mtime, as UML does). The size compared is the backing
 * DEVICE's, as openCow compares it: a file's length for a raw backing, the virtual size for
 * a snapshot layer below a live-snapshot top (a cow: its file is longer than its disk).
 */
async function checkBackingIdentity({ file, header }: Subject, req: CheckRequest, c: Collected): Promise<void> {
  const backing = resolveBackingPath(header.layout, header.backingFile, file, req.backingFile);
  let st;
  try {
    st = isObjectStoreUri(backing) ? await remoteStat(backing, req) : await statBacking(backing);
  } catch (err) {
    if (err instanceof CouldNotCheck) throw err;
    return corruption(c, 'backing', `${(err as Error).message} (stored as "${header.backingFile}")`);
  }
  let sizeOverride: number | undefined;
  // The same rule openCow follows (cow-stack.ts, snapshotBackingOf): a v3 top over a
  // *.snap-N.cow with no operator override opens that layer as cow.
  if (req.backingFile === undefined && header.layout === 'v3' && isSnapshotLayer(header.backingFile)) {
    try {
      sizeOverride = await cowVirtualSize(backing);
    } catch (err) {
      return corruption(c, 'backing', `snapshot layer "${backing}" below cannot be read as cow: ${(err as Error).message}`);
    }
  }
  if (sizeOverride === undefined && req.backingSizeOf) {
    try {
      sizeOverride = await req.backingSizeOf(backing);
    } catch (err) {
      return corruption(c, 'backing', `backing file "${backing}" cannot be opened in the format given: ${(err as Error).message}`);
    }
  }
  try {
    checkBacking(header, st, backing, { ignoreMtime: req.commitPending, sizeOverride });
  } catch (err) {
    corruption(c, 'backing', (err as Error).message);
  }
  if (!header.layout.startsWith('qemu') && (st.mtime < 0 || st.mtime >= 2 ** 32)) {
    corruption(c, 'backing', `backing file "${backing}" mtime ${st.mtime} is outside the header's 32-bit range: UML and uml_moo can never validate this COW`);
  }
}

/**
 * An s3:// backing (a pinned published version): present in the store or in this machine's
 * manifest cache. "Not found" is corruption (the overlay's base is gone); an unreachable
 * store with nothing cached means the check could not be done — not that the image is bad.
 */
async function remoteStat(address: string, req: CheckRequest): Promise<{ size: number; mtime: number }> {
  if (!req.remoteBackingStat) throw new CouldNotCheck(`backing ${address} is an object-store address; no object-store access to check it`);
  try {
    return await req.remoteBackingStat(address);
  } catch (err) {
    if ((err as Error).name === 'ObjectNotFoundError' || (err as Error).name === 'ManifestError') throw err;
    throw new CouldNotCheck(`backing ${address}: the object store cannot be reached and the version is not cached here (${(err as Error).message})`);
  }
}

/** Set bits for sectors >= fromSector (and < representableSectors). */
function countAllocatedFrom(bitmap: AllocationBitmap, g: CowGeometry, fromSector: number): number {
  if (fromSector >= g.representableSectors) return 0;
  return bitmap.countSet(fromSector, g.representableSectors);
}
