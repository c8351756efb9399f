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
import { open, type FileHandle } from 'node:fs/promises';
import { readFully } from '../../block/file-io.js';
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

export interface CowReadOptions {
  readOnly?: boolean;
  layout?: string;
  backingFile?: string;
  ignoreMtime?: boolean;
  /** Default true. false: do not stat/compare the backing file (info on a broken chain). */
  validateBacking?: boolean;
  /** For non-raw backings the size to compare is the backing device's virtual size. */
  backingSizeOf?: (file: string) => Promise<number>;
}

export interface CowFileState {
  readonly path: string;
  readonly fh: FileHandle;
  readonly fileLength: number;
  readonly header: CowHeader;
  readonly geometry: CowGeometry;
  /** bitmapLength bytes as on disk. */
  readonly bitmap: Buffer;
  readonly backingStored: string;
  readonly backingResolved: string;
}

/** Open the COW file and read header + bitmap. The caller owns `fh` afterwards. */
export async function readCowFile(file: string, options: CowReadOptions = {}): Promise<CowFileState> {
  const fh = await open(file, options.readOnly ? 'r' : 'r+');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new CowHeaderError(`${file}: not a regular file`);
    const head = Buffer.alloc(Math.min(COW_MAX_HEADER_SIZE, st.size));
    await readFully(fh, 0, head);
    const { header, geometry, backing } = await chooseLayout(file, head, st.size, options);
    const bitmap = Buffer.alloc(geometry.bitmapLength);
    await readFully(fh, geometry.bitmapOffset, bitmap);
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
      `file length ${fileLength} is shorter than the ${layout} ${geometry.minFileLength === geometry.dataOffset ? `data area start ${geometry.dataOffset}` : `bitmap end ${geometry.minFileLength}`}`,
    );
  }
  const backing = resolveBackingPath(layout, header.backingFile, file, options.backingFile);
  if (options.validateBacking !== false) {
    const st: BackingStat = await statBacking(backing);
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
