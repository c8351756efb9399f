/**
 * Creating a cow file: a v3 header exactly like uml_mkcow writes it, and the cow record's
 * create(), which takes the size to record from the OPENED backing device (a chain's
 * virtual size; for raw that is the file size, as uml_mkcow records it).
 */
import type { FileHandle } from 'node:fs/promises';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { createFileAtomically } from '../../util/atomic-file.js';
import type { CreateRequest, CreateResult } from '../format-record.js';
import { withBacking } from '../format-record.js';
import { absolutizeLikeUml, CowBackingError, statBacking, type BackingStat } from './cow-backing.js';
import { COW_SECTOR_SIZE, encodeCowHeader } from './cow-header.js';
import { cowGeometry } from './cow-layout.js';

export interface CreateCowOptions {
  backingFile: string;
  /** Overwrite an existing file; also accept a backing mtime outside [0, 2^32) (docs/cow-format.md#c3). */
  force?: boolean;
  /**
   * Size to record: the backing DEVICE's size (a chain such as cow → add-cow records its
   * virtual size, which openCow compares against). Default: the file size (raw backing).
   */
  backingSize?: number;
  /**
   * size + mtime of a backing that is not a local file (s3:// published image, pinned to
   * its version): recorded as given; `backingFile` is stored verbatim.
   */
  remoteBackingStat?: BackingStat;
}

/**
 * Create a v3 COW exactly like uml_mkcow: packed v3 header, sectorsize 512, alignment
 * 4096, absolutized backing path, backing mtime as u32, file length data_offset + size
 * (sparse: only the header is written).
 */
export async function createCow(path: string, options: CreateCowOptions): Promise<void> {
  if (!options.backingFile) throw new CowBackingError('createCow: backing file path is empty');
  const backingFile = options.remoteBackingStat ? options.backingFile : await absolutizeLikeUml(options.backingFile);
  const st = options.remoteBackingStat ?? (await statBacking(backingFile));
  if ((st.mtime < 0 || st.mtime >= 2 ** 32) && !options.force) {
    throw new CowBackingError(
      `backing file "${backingFile}" mtime ${st.mtime} does not fit the header's 32-bit field; UML and uml_moo would refuse the COW forever (use force to create it anyway)`,
    );
  }
  const header = {
    layout: 'v3' as const,
    backingFile,
    mtime: ((st.mtime % 2 ** 32) + 2 ** 32) % 2 ** 32, // low 32 bits, as uml_mkcow stores it
    size: options.backingSize ?? st.size,
    sectorSize: COW_SECTOR_SIZE,
    alignment: 4096,
  };
  const bytes = encodeCowHeader(header);
  const geometry = cowGeometry({ ...header, version: 3, headerSize: bytes.length });
  // Crash-safe: a kill -9 at any moment leaves no file or a complete one, never a
  // header-only file under the final name (util/atomic-file.ts).
  const write = async (fh: FileHandle) => {
    await fh.write(bytes, 0, bytes.length, 0);
    await fh.truncate(geometry.dataOffset + header.size);
  };
  await createFileAtomically(path, write, { overwrite: options.force }).catch((err: NodeJS.ErrnoException) => {
    // Keep the errno code: callers (e.g. the overlay-dir provider) branch on it.
    if (err.code === 'EEXIST') throw Object.assign(new CowBackingError(`${path}: file exists (use force to overwrite): EEXIST`), { code: 'EEXIST' });
    throw err;
  });
}

/** The record's create: validates the request, measures the backing through its device. */
export async function createCowImage(path: string, req: CreateRequest): Promise<CreateResult> {
  const cmd = req.forConvert ? '-O cow' : 'create -f cow';
  if (!req.backing) throw new Error(`${cmd} needs --backing${req.forConvert ? ' BASE' : ''} (a cow overlay always has a backing file)`);
  if (req.image !== undefined || req.clusterSize !== undefined) throw new Error(`--image and --cluster-size apply to ${req.forConvert ? '-O' : '-f'} add-cow only`);
  // No -F: raw, but a foreign image (qcow2, vmdk, ...) is refused rather than recorded as raw.
  const backingFormat = req.backingFormat ?? (await req.defaultBackingFormat?.(req.backing)) ?? 'raw';
  const notes: string[] = [];
  if (backingFormat !== 'raw') {
    // The cow header has no format field: record nothing, but the operator must repeat it when serving.
    notes.push(`note: cow headers cannot record the backing format; pass --backing-format ${backingFormat} when opening`);
  }
  const backingDev = await withBacking(req.openBacking, req.backing, backingFormat, (d) => ({ size: d.size, mtime: d.describe().detail?.mtime })).catch(
    (err: NodeJS.ErrnoException) => {
      throw err.code === 'ENOENT' ? new Error(`backing file "${req.backing}" does not exist`) : err;
    },
  );
  const backingSize = backingDev.size;
  checkRequestedSize(req, backingSize);
  // An s3:// base is recorded by its pinned address, size and manifest time (docs/object-store.md).
  const remote = isObjectStoreUri(req.backing) ? { remoteBackingStat: { size: backingSize, mtime: typeof backingDev.mtime === 'number' ? backingDev.mtime : 0 } } : {};
  await createCow(path, { backingFile: req.backing, force: req.force, backingSize, ...remote });
  return { files: [path], notes };
}

/** A cow overlay is always the size of its backing (rounded up to whole sectors). */
function checkRequestedSize(req: CreateRequest, backingSize: number): void {
  if (req.size === undefined) return;
  if (req.forConvert) {
    const virtual = Math.ceil(backingSize / COW_SECTOR_SIZE) * COW_SECTOR_SIZE;
    if (virtual !== req.size) {
      throw new Error(
        `-O cow: source virtual size ${req.size} differs from the overlay's size ${virtual} (backing "${req.backing}" is ${backingSize} bytes; a cow overlay is always the size of its backing file)`,
      );
    }
  } else if (req.size !== backingSize) {
    throw new Error(`--size ${req.size}: a cow overlay is always the size of its backing file (${req.backing} is ${backingSize} bytes)`);
  }
}
