/**
 * Reading a COW file's metadata: header detection (with the version-2 UML/QEMU choice),
 * geometry, file-length sanity and the backing-file check. Produces everything the
 * device needs except the backing device itself. Used by openCow and by image tools
 * (info/check/map) through inspectCowFile.
 *
 * Version-2 choice (docs/cow-format.md#c1): UML v2 (4120) and QEMU's i386 (1048) / x86_64 (1056)
 * layouts share magic and version. Each candidate is decoded and accepted only if its
 * sectorsize is 512, the file is long enough for its bitmap (and, for UML, its data
 * offset), and its size field equals the backing file's size. Exactly one must pass;
 * otherwise we refuse and name every candidate with its verdict. options.layout forces one.
 */
import type { FileHandle } from 'node:fs/promises';
import { openChecked, type OpenGuard } from '../../block/open-guard.js';
import type { NativeFs } from '../../block/native-fs.js';
import { fileBitmapSource, type BitmapSource } from '../allocation-bitmap.js';
import { readFully } from '../../block/file-io.js';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { checkBacking, CowBackingError, resolveBackingPath, statBacking, type BackingStat } from './cow-backing.js';
import {
  COW_MAX_HEADER_SIZE,
  CowHeaderError,
  decodeCowHeader,
  detectCowLayout,
  isCowLayoutName,
  type CowHeader,
  type CowLayoutName,
} from './cow-header.js';
import { cowGeometry, type CowGeometry } from './cow-layout.js';
import { mapRecordedPath, type PathMapping } from '../path-map.js';
import { HALF_CREATED_HINT } from '../check-report.js';

export { HALF_CREATED_HINT };

export interface CowReadOptions {
  readOnly?: boolean;
  layout?: string;
  backingFile?: string;
  ignoreMtime?: boolean;
  /** Default true. false: do not stat/compare the backing file (info on a broken chain). */
  validateBacking?: boolean;
  /** Rewrites of the recorded backing path (not of an explicit backingFile). */
  pathMap?: readonly PathMapping[];
  /** For non-raw backings the size to compare is the backing device's virtual size. */
  backingSizeOf?: (file: string) => Promise<number>;
  /** The server's open-file registry (open-guard.ts). */
  guard?: OpenGuard;
  /** The path came from a header (a cow layer below another): --allow-path applies. */
  referenced?: boolean;
  /** With the native addon, SEEK_DATA tells which bitmap pages are holes (read as zero, no I/O). */
  native?: NativeFs;
  /**
   * size + mtime of a backing that is not a local file (an s3:// published image: its
   * virtual size and its manifest's creation time). Default: stat(2).
   */
  remoteBackingStat?: (address: string) => Promise<BackingStat>;
}

export interface CowFileState {
  readonly path: string;
  readonly fh: FileHandle;
  readonly fileLength: number;
  readonly header: CowHeader;
  readonly geometry: CowGeometry;
  /**
   * The bitmap region (bitmapLength bytes at bitmapOffset of fh), read page by page on
   * demand: never loaded whole, so memory does not grow with the disk size.
   */
  readonly bitmap: BitmapSource;
  readonly backingStored: string;
  readonly backingResolved: string;
}

/** Open the COW file and read its header; the bitmap is a source for on-demand pages. The caller owns `fh` afterwards. */
export async function readCowFile(file: string, options: CowReadOptions = {}): Promise<CowFileState> {
  const fh = await openChecked(file, { writable: !options.readOnly, what: 'cow file', referenced: options.referenced, guard: options.guard });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new CowHeaderError(`${file}: not a regular file`);
    if (st.size === 0) throw new CowHeaderError(`${file}: empty file (0 bytes), no cow header; ${HALF_CREATED_HINT}`);
    const head = Buffer.alloc(Math.min(COW_MAX_HEADER_SIZE, st.size));
    await readFully(fh, 0, head);
    const { header, geometry, backing } = await chooseLayout(file, head, st.size, options);
    const bitmap = await cowBitmapSource(fh.fd, geometry, options.native);
    return {
      path: file,
      fh,
      fileLength: st.size,
      header,
      geometry,
      bitmap,
      backingStored: header.backingFile,
      backingResolved: backing,
    };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * Byte ranges of the bitmap that are not holes, relative to the bitmap's start. A fresh
 * overlay's bitmap is one hole (create only truncates), so this is one SEEK_DATA. After
 * MAX_DATA_RANGES ranges the rest counts as data (pages are then read once on first use
 * and dropped if zero): open stays quick however scattered the writes were.
 */
const MAX_DATA_RANGES = 256;

/** The bitmap region of an open cow file as a source of on-demand pages (allocation-bitmap.ts). */
export async function cowBitmapSource(fd: number, g: CowGeometry, native: NativeFs | undefined): Promise<BitmapSource> {
  const ranges = native ? await bitmapDataRanges(native, fd, g) : undefined;
  return fileBitmapSource(fd, g.bitmapOffset, g.bitmapLength, ranges);
}

async function bitmapDataRanges(native: NativeFs, fd: number, g: CowGeometry): Promise<Array<[number, number]>> {
  const start = g.bitmapOffset;
  const end = g.bitmapOffset + g.bitmapLength;
  const ranges: Array<[number, number]> = [];
  let pos = start;
  while (pos < end) {
    const data = await native.seekData(fd, pos);
    if (data === -1 || data >= end) break;
    if (ranges.length === MAX_DATA_RANGES) {
      ranges.push([data - start, end - start]);
      break;
    }
    const hole = await native.seekHole(fd, data);
    pos = hole === -1 ? end : Math.min(hole, end);
    ranges.push([data - start, pos - start]);
  }
  return ranges;
}

interface Chosen {
  header: CowHeader;
  geometry: CowGeometry;
  backing: string;
}

async function chooseLayout(file: string, head: Buffer, fileLength: number, options: CowReadOptions): Promise<Chosen> {
  let candidates: CowLayoutName[];
  if (options.layout !== undefined) {
    if (!isCowLayoutName(options.layout)) {
      throw new CowHeaderError(`layout ${options.layout} unknown (known: v1, v2, v3, v3-broken, qemu-i386, qemu-x86_64)`);
    }
    candidates = [options.layout];
  } else {
    try {
      candidates = detectCowLayout(head);
    } catch (err) {
      throw prefix(file, err);
    }
  }
  if (candidates.length === 1) return validateCandidate(file, head, fileLength, candidates[0]!, options).catch((err) => {
    throw prefix(file, err);
  });

  const verdicts: string[] = [];
  const passed: Chosen[] = [];
  for (const layout of candidates) {
    try {
      passed.push(await validateCandidate(file, head, fileLength, layout, { ...options, ignoreMtime: true }));
      verdicts.push(`${layout} (fits)`);
    } catch (err) {
      verdicts.push(`${layout} (${(err as Error).message})`);
    }
  }
  if (passed.length === 1) {
    // Now apply the mtime rule to the one that fits.
    return validateCandidate(file, head, fileLength, passed[0]!.header.layout, options).catch((err) => {
      throw prefix(file, err);
    });
  }
  if (passed.length === 0) {
    throw new CowHeaderError(`${file}: version-2 COW header fits no layout: ${verdicts.join('; ')}`);
  }
  throw new CowHeaderError(
    `${file}: ambiguous version-2 COW header: candidates ${passed.map((c) => c.header.layout).join(', ')} all fit; pass layout to choose (${verdicts.join('; ')})`,
  );
}

async function validateCandidate(file: string, head: Buffer, fileLength: number, layout: CowLayoutName, options: CowReadOptions): Promise<Chosen> {
  const header = decodeCowHeader(head, layout);
  const geometry = cowGeometry(header);
  if (fileLength < geometry.minFileLength) {
    throw new CowHeaderError(
      `file length ${fileLength} is shorter than the ${layout} ${geometry.minFileLength === geometry.dataOffset ? `data area start ${geometry.dataOffset}` : `bitmap end ${geometry.minFileLength}`}; ${HALF_CREATED_HINT}`,
    );
  }
  const resolved = resolveBackingPath(layout, header.backingFile, file, options.backingFile);
  const backing = options.backingFile === undefined ? mapRecordedPath(resolved, options.pathMap) : resolved;
  if (options.validateBacking !== false) {
    const st: BackingStat = isObjectStoreUri(backing) && options.remoteBackingStat ? await options.remoteBackingStat(backing) : await statBacking(backing);
    const sizeOverride = options.backingSizeOf ? await options.backingSizeOf(backing) : undefined;
    checkBacking(header, st, backing, { ignoreMtime: options.ignoreMtime, sizeOverride });
  }
  return { header, geometry, backing };
}

function prefix(file: string, err: unknown): unknown {
  if (err instanceof CowHeaderError) return new CowHeaderError(`${file}: ${err.message}`);
  if (err instanceof CowBackingError) return new CowBackingError(`${file}: ${err.message}`);
  return err;
}
