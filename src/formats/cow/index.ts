/**
 * The cow format (User-Mode-Linux COW, byte-compatible with UML, uml_mkcow and uml_moo):
 * public surface. See cow-device.ts for the design note and docs/cow-format.md for the
 * on-disk format.
 *
 *   openCow(path, options, openBacking)  detect layout → validate backing (size, mtime)
 *                                        → CowDevice over openBacking(path, 'raw' | options.backingFormat)
 *   createCow(path, { backingFile })     new v3 file, byte-identical to `uml_mkcow path backing`
 *   inspectCowFile(path, options)        header/geometry/bitmap without opening the backing device
 *   cowInspection(device)                the same for an open device (CheckedDevice or CowDevice)
 */
import type { FileHandle } from 'node:fs/promises';
import type { BlockDevice } from '../../block/block-device.js';
import { CheckedDevice } from '../../block/checked-device.js';
import { FileIo } from '../../block/file-io.js';
import { createFileAtomically } from '../../util/atomic-file.js';
import type { OpenBacking, OpenImageOptions } from '../open-image.js';
import { absolutizeLikeUml, CowBackingError, statBacking, type BackingStat } from './cow-backing.js';
import { CowDevice, type CowInspection } from './cow-device.js';
import { COW_SECTOR_SIZE, encodeCowHeader } from './cow-header.js';
import { cowGeometry } from './cow-layout.js';
import { readCowFile, type CowReadOptions } from './cow-open.js';
import { AllocationBitmap } from '../allocation-bitmap.js';

export interface CreateCowOptions {
  backingFile: string;
  /** Overwrite an existing file; also accept a backing mtime outside [0, 2^32) (docs/cow-format.md#c3). */
  force?: boolean;
  /**
   * Size to record for a non-raw backing (a chain such as cow → add-cow): its virtual size,
   * which openCow compares against when opened with that backing format. Default: file size.
   */
  backingSize?: number;
  /**
   * size + mtime of a backing that is not a local file (s3:// published image, pinned to
   * its version): recorded as given; `backingFile` is stored verbatim.
   */
  remoteBackingStat?: BackingStat;
}

export async function openCow(path: string, options: OpenImageOptions, openBacking: OpenBacking): Promise<BlockDevice> {
  const backingFormat = options.backingFormat ?? 'raw';
  const io = options.io ?? new FileIo();
  const state = await readCowFile(path, {
    native: io.native,
    guard: io.guard,
    referenced: options.referenced,
    readOnly: options.readOnly,
    layout: options.layout,
    backingFile: options.backingFile,
    ignoreMtime: options.ignoreMtime,
    pathMap: options.pathMap,
    remoteBackingStat: async (address: string) => {
      const dev = await openBacking(address, backingFormat);
      const mtime = dev.describe().detail?.mtime;
      await dev.close();
      if (typeof mtime !== 'number') throw new CowBackingError(`backing "${address}" reports no mtime`);
      return { size: dev.size, mtime };
    },
    // A non-raw backing (a chain) is compared by its virtual size, not its file size.
    ...(backingFormat === 'raw'
      ? {}
      : {
          backingSizeOf: async (file: string) => {
            const dev = await openBacking(file, backingFormat);
            const size = dev.size;
            await dev.close();
            return size;
          },
        }),
  });
  let backing: BlockDevice;
  try {
    backing = await openBacking(state.backingResolved, backingFormat);
  } catch (err) {
    await state.fh.close();
    throw err;
  }
  return new CowDevice({
    path,
    fh: state.fh,
    header: state.header,
    geometry: state.geometry,
    bitmapBytes: state.bitmap,
    backing,
    backingStored: state.backingStored,
    backingResolved: state.backingResolved,
    readOnly: Boolean(options.readOnly),
    io,
  });
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

/** Streaming the bitmap (counting, never kept): large reads, few syscalls. */
const STREAM_PAGE = 64 * 1024;

/**
 * Header, geometry and allocated-sector count of a COW file, without opening its backing
 * device. The bitmap is streamed page by page (memory does not grow with the disk size).
 */
export async function inspectCowFile(
  path: string,
  options: Pick<CowReadOptions, 'layout' | 'backingFile' | 'ignoreMtime' | 'validateBacking' | 'native' | 'remoteBackingStat'> = {},
): Promise<Omit<CowInspection, 'bitmap'> & { allocatedSectors: number; fileLength: number }> {
  const state = await readCowFile(path, { native: new FileIo().native, ...options, readOnly: true });
  let allocatedSectors: number;
  try {
    const g = state.geometry;
    allocatedSectors = new AllocationBitmap(g.sectors, g.bitmapLength, STREAM_PAGE, state.bitmap).countSet(0, g.representableSectors);
  } finally {
    await state.fh.close();
  }
  return {
    path,
    layout: state.header.layout,
    header: state.header,
    geometry: state.geometry,
    backingFile: { stored: state.backingStored, resolved: state.backingResolved },
    allocatedSectors,
    fileLength: state.fileLength,
  };
}

/** The COW inspection of an open device (unwraps CheckedDevice), or undefined if not cow. */
export function cowInspection(device: BlockDevice): CowInspection | undefined {
  const inner = device instanceof CheckedDevice ? device.driver : device;
  return inner instanceof CowDevice ? inner.inspect() : undefined;
}


export { CowDevice } from './cow-device.js';
export type { CowBitmapView, CowInspection } from './cow-device.js';
export {
  COW_LAYOUTS,
  COW_MAGIC,
  CowHeaderError,
  decodeCowHeader,
  detectCowLayout,
  encodeCowHeader,
  isCowLayoutName,
  type CowHeader,
  type CowLayoutName,
} from './cow-header.js';
export { cowGeometry, type CowGeometry } from './cow-layout.js';
export { CowBackingError, absolutizeLikeUml, checkBacking, resolveBackingPath, statBacking, type BackingStat } from './cow-backing.js';
export { readCowFile, type CowReadOptions, type CowFileState } from './cow-open.js';
