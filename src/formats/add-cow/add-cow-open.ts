/**
 * Opening an add-cow image: header → names → image file → bitmap → backing device.
 *
 * Names (docs/add-cow-format.md#a7): a relative image or backing name is resolved against
 * the DIRECTORY OF THE .add-cow FILE (the final code's path_combine), never the CWD.
 * After resolving, the image file, the backing file and the .add-cow file must be three
 * different files (compared by resolved path and, where they exist, by device+inode).
 *
 * Formats: the backing file is opened with the format RECORDED IN THE HEADER (never probed;
 * a raw file whose guest wrote "ACOW" must stay raw). OpenImageOptions.backingFormat /
 * backingFile override the header when the operator gives them. Only raw image files are
 * supported ("image file format" must be "raw").
 *
 * The bitmap is read into memory. Metadata shorter than HEADER_SIZE + bitmap length (e.g.
 * the image file grew after creation) reads as zeros there: those clusters are unallocated.
 * Bits past the last cluster are cleared in memory, so they are written back as 0.
 */
import { quotedPath } from '../../util/quoted-path.js';
import { stat, type FileHandle } from 'node:fs/promises';
import { openChecked, type OpenGuard } from '../../block/open-guard.js';
import path from 'node:path';
import { DeviceError, type BlockDevice } from '../../block/block-device.js';
import { readFully } from '../../block/file-io.js';
import { mapRecordedPath, type PathMapping } from '../path-map.js';
import { AllocationBitmap } from '../allocation-bitmap.js';
import type { OpenRequest } from '../format-record.js';
import {
  ADD_COW_FIXED_SIZE,
  type AddCowHeader,
  addCowBitmapLength,
  addCowClusterCount,
  parseAddCowHeader,
  peekAddCowHeaderSize,
} from './add-cow-header.js';
import { AddCowDevice } from './add-cow-device.js';
import { isObjectStoreUri } from '../../objectstore/uri.js';

/** Logical sector: the virtual size is the image length rounded down to this (docs/add-cow-format.md#a2). */
export const ADD_COW_SECTOR = 512;

export interface AddCowFiles {
  readonly path: string;
  readonly header: AddCowHeader;
  readonly imagePath: string;
  readonly backingPath: string | undefined;
  readonly metaFile: FileHandle;
  readonly imageFile: FileHandle;
  readonly imageLength: number;
  readonly size: number;
  readonly bitmap: AllocationBitmap;
}

/** Resolve a stored name: absolute as-is, relative against the .add-cow file's directory. */
export function resolveAddCowName(addCowPath: string, name: string): string {
  // A published object-store image (docs/object-store.md) is an address, not a path.
  if (isObjectStoreUri(name)) return name;
  return path.resolve(path.dirname(path.resolve(addCowPath)), name);
}

/** Read and validate the header of an open .add-cow file. */
export async function readAddCowHeader(file: FileHandle, label: string): Promise<AddCowHeader> {
  try {
    const { size: fileLength } = await file.stat();
    const fixed = Buffer.alloc(Math.min(ADD_COW_FIXED_SIZE, fileLength));
    await readFully(file, 0, fixed);
    const headerSize = peekAddCowHeaderSize(fixed);
    if (fileLength < headerSize) {
      throw new Error(`file too short: ${fileLength} bytes, the header alone is ${headerSize} bytes`);
    }
    const full = Buffer.alloc(headerSize);
    await readFully(file, 0, full);
    return parseAddCowHeader(full);
  } catch (err) {
    throw new DeviceError('EINVAL', `${label}: invalid add-cow header: ${(err as Error).message}`);
  }
}

/**
 * Open the .add-cow and image files, validate names and identities, and load the bitmap.
 * Does not open the backing file (inspection must work when it is missing).
 */
export async function openAddCowFiles(
  addCowPath: string,
  readOnly: boolean,
  backingOverride?: string,
  pathMap?: readonly PathMapping[],
  open: { guard?: OpenGuard; referenced?: boolean } = {},
): Promise<AddCowFiles> {
  const metaFile = await openChecked(addCowPath, { writable: !readOnly, what: 'add-cow file', referenced: open.referenced, guard: open.guard });
  let imageFile: FileHandle | undefined;
  try {
    const header = await readAddCowHeader(metaFile, addCowPath);
    if (header.imageFormat !== 'raw') {
      throw new DeviceError('ENOTSUP', `${addCowPath}: image file format "${header.imageFormat}" is not supported (only "raw")`);
    }
    const imagePath = mapRecordedPath(resolveAddCowName(addCowPath, header.imageName), pathMap);
    const backingPath =
      backingOverride !== undefined
        ? isObjectStoreUri(backingOverride) ? backingOverride : path.resolve(backingOverride)
        : header.backingName === undefined
          ? undefined
          : mapRecordedPath(resolveAddCowName(addCowPath, header.backingName), pathMap);
    await checkDistinctFiles(addCowPath, imagePath, backingPath);

    // The image file's name comes from the header: a hostile one may name anything.
    imageFile = await openChecked(imagePath, { writable: !readOnly, what: 'image file', referenced: true, guard: open.guard }).catch((err: NodeJS.ErrnoException) => {
      throw new DeviceError(err instanceof DeviceError ? err.code : 'EINVAL', `${addCowPath}: cannot open image file ${quotedPath(header.imageName)} (${quotedPath(imagePath)}): ${err.message}`);
    });
    const st = await imageFile.stat();
    if (!st.isFile()) throw new DeviceError('EINVAL', `${addCowPath}: image file ${imagePath} is not a regular file`);
    const size = Math.floor(st.size / ADD_COW_SECTOR) * ADD_COW_SECTOR;
    const bitmap = await loadBitmap(metaFile, header, size);
    return { path: addCowPath, header, imagePath, backingPath, metaFile, imageFile, imageLength: st.size, size, bitmap };
  } catch (err) {
    await imageFile?.close().catch(() => {});
    await metaFile.close().catch(() => {});
    throw err;
  }
}

async function loadBitmap(metaFile: FileHandle, header: AddCowHeader, size: number): Promise<AllocationBitmap> {
  const clusters = addCowClusterCount(size, header.clusterBits);
  const bytes = Buffer.alloc(addCowBitmapLength(size, header.clusterBits));
  await readFully(metaFile, header.headerSize, bytes); // past EOF → zeros (unallocated)
  // Bits for clusters past the end are ignored on read and must be written as 0.
  const usedInLast = clusters % 8;
  if (usedInLast !== 0) bytes[bytes.length - 1]! &= (1 << usedInLast) - 1;
  return new AllocationBitmap(clusters, bytes.length, 4096, bytes);
}

/** Refuse when two of the three files are the same (by resolved path or device+inode). */
export async function checkDistinctFiles(addCowPath: string, imagePath: string, backingPath: string | undefined): Promise<void> {
  const files: Array<[string, string]> = [
    ['add-cow file', path.resolve(addCowPath)],
    ['image file', imagePath],
  ];
  if (backingPath !== undefined) files.push(['backing file', backingPath]);
  const ids = await Promise.all(
    files.map(async ([, p]) => {
      const s = await stat(p).catch(() => undefined);
      return s ? `${s.dev}:${s.ino}` : undefined;
    }),
  );
  for (let i = 0; i < files.length; i++) {
    for (let j = i + 1; j < files.length; j++) {
      if (files[i]![1] === files[j]![1] || (ids[i] !== undefined && ids[i] === ids[j])) {
        throw new DeviceError('EINVAL', `${addCowPath}: the ${files[i]![0]} and the ${files[j]![0]} are the same file (${files[j]![1]})`);
      }
    }
  }
}

function checkFormatName(addCowPath: string, value: string, known: readonly string[]): string {
  if (known.includes(value)) return value;
  throw new DeviceError('ENOTSUP', `${addCowPath}: backing file format "${value}" is not supported (supported: ${known.join(', ')})`);
}

/**
 * The add-cow driver: open the two files, then the backing with the format RECORDED IN
 * THE HEADER (or the operator's override; never probed), unless ALL_ALLOCATED.
 */
export async function openAddCow(addCowPath: string, req: OpenRequest): Promise<AddCowDevice> {
  const readOnly = req.readOnly;
  const files = await openAddCowFiles(addCowPath, readOnly, req.backingFile, req.pathMap, { guard: req.io.guard, referenced: req.referenced });
  const { header } = files;
  let backing: BlockDevice | undefined;
  let backingFormat: string | undefined;
  try {
    if (files.backingPath !== undefined) {
      const recorded = req.backingFormat ?? header.backingFormat;
      if (recorded === '') {
        throw new DeviceError('EINVAL', `${addCowPath}: backing file format is empty in the header; give one explicitly (never probed)`);
      }
      backingFormat = checkFormatName(addCowPath, recorded, req.knownFormats);
    }
    // ALL_ALLOCATED: the backing file is ignored entirely (it may even be gone).
    if (!header.allAllocated && files.backingPath !== undefined) {
      backing = await req.openBacking(files.backingPath, backingFormat!);
    }
    return new AddCowDevice({
      path: addCowPath,
      header,
      imagePath: files.imagePath,
      backingPath: files.backingPath,
      backingFormat,
      metaFile: files.metaFile,
      imageFile: files.imageFile,
      backing,
      size: files.size,
      bitmap: files.bitmap,
      readOnly,
      io: req.io,
    });
  } catch (err) {
    await backing?.close().catch(() => {});
    await files.imageFile.close().catch(() => {});
    await files.metaFile.close().catch(() => {});
    throw err;
  }
}
