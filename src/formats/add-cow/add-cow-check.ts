/**
 * `cownbd check` for add-cow: header, the three names (distinct files, image present,
 * backing present with a format), the metadata file's length against the layout, tail
 * bits, padding after the bitmap. Repairs touch only the .add-cow file (never the image
 * or backing file). Facts: docs/add-cow-format.md.
 */
import { quotedPath } from '../../util/quoted-path.js';
import { stat, type FileHandle } from 'node:fs/promises';
import { readFully, writeFully } from '../../block/file-io.js';
import { clearBitsFrom, corruption, fmtRanges, nonZeroRanges, repairable, zeroRanges, type Collected } from '../check-report.js';
import type { CheckRequest } from '../format-record.js';
import { countBits } from '../inspection.js';
import {
  ADD_COW_FIXED_SIZE,
  addCowBitmapLength,
  addCowClusterCount,
  addCowMetadataLength,
  parseAddCowHeader,
  peekAddCowHeaderSize,
  type AddCowHeader,
} from './add-cow-header.js';
import { ADD_COW_SECTOR, checkDistinctFiles, resolveAddCowName } from './add-cow-open.js';

export async function checkAddCow(file: string, fh: FileHandle, req: CheckRequest, c: Collected): Promise<void> {
  const fileLength = (await fh.stat()).size;
  let header: AddCowHeader;
  try {
    header = await readHeader(fh, fileLength);
  } catch (err) {
    return corruption(c, 'header', `${file}: ${(err as Error).message}`);
  }
  const size = await checkNames(file, header, req, c);
  if (size === undefined) return;
  await checkMetadata(fh, fileLength, header, size, c);
}

async function readHeader(fh: FileHandle, fileLength: number): Promise<AddCowHeader> {
  const fixed = Buffer.alloc(Math.min(ADD_COW_FIXED_SIZE, fileLength));
  await readFully(fh, 0, fixed);
  const hs = peekAddCowHeaderSize(fixed);
  if (fileLength < hs) throw new Error(`file too short: ${fileLength} bytes, the header alone is ${hs} bytes`);
  const full = Buffer.alloc(hs);
  await readFully(fh, 0, full);
  return parseAddCowHeader(full);
}

/** The names and the files they point at; returns the virtual size (undefined: no image). */
async function checkNames(file: string, header: AddCowHeader, req: CheckRequest, c: Collected): Promise<number | undefined> {
  const imagePath = resolveAddCowName(file, header.imageName);
  const backingPath = req.backingFile ?? (header.backingName === undefined ? undefined : resolveAddCowName(file, header.backingName));
  try {
    await checkDistinctFiles(file, imagePath, backingPath);
  } catch (err) {
    corruption(c, 'names', (err as Error).message);
  }
  if (header.imageFormat !== 'raw') corruption(c, 'image-file', `image file format "${header.imageFormat}" is not supported (only raw)`);
  const imageSt = await stat(imagePath).catch(() => undefined);
  if (!imageSt) {
    corruption(c, 'image-file', `image file ${quotedPath(header.imageName)} (${quotedPath(imagePath)}) does not exist`);
    return undefined;
  }
  const size = Math.floor(imageSt.size / ADD_COW_SECTOR) * ADD_COW_SECTOR;
  if (imageSt.size !== size) {
    c.findings.push({ class: 'image-file', severity: 'info', message: `image file length ${imageSt.size} is not a multiple of 512; the last ${imageSt.size - size} bytes are not part of the disk`, repairable: false });
  }
  if (backingPath !== undefined && !header.allAllocated) {
    if (header.backingFormat === '') corruption(c, 'names', 'a backing file is named but its format (bytes 44..59) is empty');
    if (!(await stat(backingPath).catch(() => undefined))) corruption(c, 'backing', `backing file ${quotedPath(header.backingName ?? backingPath)} (${quotedPath(backingPath)}) does not exist`);
  }
  return size;
}

async function checkMetadata(fh: FileHandle, fileLength: number, header: AddCowHeader, size: number, c: Collected): Promise<void> {
  const clusters = addCowClusterCount(size, header.clusterBits);
  const bitmapLength = addCowBitmapLength(size, header.clusterBits);
  const expected = addCowMetadataLength(size, header.clusterBits);
  const bitmapEnd = header.headerSize + bitmapLength;
  const bitmap = Buffer.alloc(bitmapLength);
  await readFully(fh, header.headerSize, bitmap);
  const truncate = (w: FileHandle): Promise<void> => w.truncate(expected);
  if (fileLength < bitmapEnd) {
    repairable(c, 'file-length', 'leak', `metadata file length ${fileLength} ends before the bitmap end ${bitmapEnd}; the missing bits read as unallocated (the image file may have grown)`, truncate);
  } else if (fileLength < expected) {
    repairable(c, 'file-length', 'leak', `metadata file length ${fileLength} is shorter than the created length ${expected} (header ${header.headerSize} + bitmap rounded to the cluster size)`, truncate);
  } else if (fileLength > expected) {
    repairable(c, 'file-length', 'leak', `metadata file length ${fileLength} exceeds the layout length ${expected} by ${fileLength - expected} bytes that no reader uses`, truncate);
  }
  const tail = countBits(bitmap, bitmapLength * 8) - countBits(bitmap, clusters);
  if (tail > 0) {
    const fixed = Buffer.from(bitmap);
    clearBitsFrom(fixed, clusters);
    const first = clusters >> 3;
    repairable(c, 'tail-bits', 'leak', `${tail} bit(s) set past the last cluster (${clusters} clusters of ${header.clusterSize} bytes); ignored on read`, (w) =>
      writeFully(w, header.headerSize + first, fixed.subarray(first)),
    );
  }
  const pad = await nonZeroRanges(fh, bitmapEnd, Math.min(expected, fileLength));
  if (pad.length > 0) repairable(c, 'padding', 'leak', `non-zero bytes after the bitmap (offsets ${fmtRanges(pad)}); unused bytes must be 0`, (w) => zeroRanges(w, pad));
  if (header.allAllocated && countBits(bitmap, clusters) < clusters) {
    c.findings.push({ class: 'header', severity: 'info', message: `ALL_ALLOCATED is set: the bitmap (${countBits(bitmap, clusters)} of ${clusters} bits set) and the backing file are ignored`, repairable: false });
  }
}
