/**
 * Creating, finalizing and inspecting add-cow images.
 *
 * create: writes [header][zero bitmap] and truncates the .add-cow file to
 *   HEADER_SIZE + roundup(bitmap_len, cluster_size) (the reference `bdrv_add_cow_truncate`).
 *   - The image file is adopted if it exists, else created sparse. Virtual size: explicit
 *     `size` (the image is grown/shrunk to it), else the existing image's length, else the
 *     backing device's size.
 *   - Names are stored EXACTLY as given (relative stays relative) and, like at open, a
 *     relative name means "relative to the .add-cow file's directory", not the CWD.
 *   - Formats are recorded, never probed: backing format defaults to "raw"; image "raw".
 *   - No backing file → ALL_ALLOCATED is set (the image alone is the disk).
 *   - An existing .add-cow file is only overwritten with `force`.
 *
 * finalize: when every cluster bit is set, set ALL_ALLOCATED durably (image fdatasync
 *   first, then header write + fdatasync). Afterwards the image file alone is the disk.
 */
import { open, stat, unlink, type FileHandle } from 'node:fs/promises';
import { createFileAtomically } from '../../util/atomic-file.js';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { DeviceError } from '../../block/block-device.js';
import { writeFully } from '../../block/file-io.js';
import { withBacking, type CreateRequest, type CreateResult, type OpenBacking } from '../format-record.js';
import { foreignFormatOf } from '../foreign-probe.js';
import {
  ADD_COW_COMPAT_ALL_ALLOCATED,
  ADD_COW_DEFAULT_CLUSTER_BITS,
  ADD_COW_MAX_CLUSTER_BITS,
  ADD_COW_MIN_CLUSTER_BITS,
  type AddCowHeader,
  AddCowOffset,
  addCowMetadataLength,
  encodeAddCowHeader,
} from './add-cow-header.js';
import { ADD_COW_SECTOR, checkDistinctFiles, openAddCowFiles, resolveAddCowName } from './add-cow-open.js';

export interface CreateAddCowOptions {
  imageFile: string;
  backingFile?: string;
  backingFormat?: string;
  imageFormat?: 'raw';
  clusterSize?: number;
  /** Virtual size; default: existing image file's size, else the backing file's size. */
  size?: number;
  force?: boolean;
}

/** Create an add-cow image; a size taken from the backing comes from `openBacking`'s device. */
export async function createAddCow(addCowPath: string, options: CreateAddCowOptions, openBacking: OpenBacking): Promise<void> {
  const clusterBits = clusterBitsOf(options.clusterSize ?? 2 ** ADD_COW_DEFAULT_CLUSTER_BITS);
  const imageFormat = options.imageFormat ?? 'raw';
  if (imageFormat !== 'raw') throw new DeviceError('ENOTSUP', `image format "${imageFormat as string}" is not supported (only raw)`);
  if (!options.force && (await exists(addCowPath))) {
    throw new DeviceError('EINVAL', `${addCowPath} already exists (use force to overwrite)`);
  }
  const imagePath = resolveAddCowName(addCowPath, options.imageFile);
  const backingPath = options.backingFile === undefined ? undefined : resolveAddCowName(addCowPath, options.backingFile);
  const backingFormat = options.backingFile === undefined ? undefined : (options.backingFormat ?? 'raw');
  await checkDistinctFiles(addCowPath, imagePath, backingPath);
  // An s3:// backing (an address, not a file) is checked by opening it for its size below.
  if (backingPath !== undefined && !isObjectStoreUri(backingPath) && !(await exists(backingPath))) {
    throw new DeviceError('EINVAL', `backing file "${options.backingFile}" (${backingPath}) does not exist`);
  }

  // Validate everything that can fail before touching any file.
  const header = encodeAddCowHeader({
    clusterBits,
    imageName: options.imageFile,
    imageFormat,
    backingName: options.backingFile,
    backingFormat,
    compatFeatures: options.backingFile === undefined ? ADD_COW_COMPAT_ALL_ALLOCATED : 0n,
  });
  const imageLength = (await stat(imagePath).catch(() => undefined))?.size;
  const size = options.size ?? imageLength ?? (backingPath ? await withBacking(openBacking, backingPath, backingFormat!, (d) => d.size) : undefined);
  if (size === undefined) {
    throw new DeviceError('EINVAL', `${addCowPath}: no size given, the image file does not exist and there is no backing file`);
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new DeviceError('EINVAL', `size ${size} is not a valid byte count`);
  if (options.size !== undefined && size % ADD_COW_SECTOR !== 0) {
    throw new DeviceError('EINVAL', `size ${size} is not a multiple of ${ADD_COW_SECTOR}`);
  }
  const virtualSize = Math.floor(size / ADD_COW_SECTOR) * ADD_COW_SECTOR;

  // Image first (created sparse or resized), then the metadata that refers to it; each
  // new file appears complete or not at all (util/atomic-file.ts). A crash between the
  // two leaves only an empty sparse image file, which a retry reuses.
  if (imageLength === undefined) {
    await createFileAtomically(imagePath, (fh) => fh.truncate(size));
  } else if (options.size !== undefined && imageLength !== size) {
    const image = await open(imagePath, 'r+');
    try {
      await image.truncate(size);
      await image.datasync();
    } finally {
      await image.close();
    }
  }
  const writeMeta = async (meta: FileHandle) => {
    await writeFully(meta, 0, header);
    await meta.truncate(addCowMetadataLength(virtualSize, clusterBits));
  };
  await createFileAtomically(addCowPath, writeMeta, { overwrite: true });
}

/** Set ALL_ALLOCATED once every cluster is in the image file. No-op if already set. */
export async function finalizeAddCow(addCowPath: string): Promise<void> {
  const files = await openAddCowFiles(addCowPath, false);
  try {
    const { header, bitmap } = files;
    if (header.allAllocated) return;
    const missing = bitmap.bitCount - bitmap.countSet();
    if (missing > 0) {
      throw new DeviceError(
        'EINVAL',
        `${addCowPath}: cannot finalize: ${missing} of ${bitmap.bitCount} clusters are not allocated in the image file (copy them from the backing file first)`,
      );
    }
    await files.imageFile.datasync();
    // Rewrite only the compat field, so every other header byte stays exactly as it was.
    const compat = Buffer.alloc(8);
    compat.writeBigUInt64LE(header.compatFeatures | ADD_COW_COMPAT_ALL_ALLOCATED);
    await writeFully(files.metaFile, AddCowOffset.compatFeatures, compat);
    await files.metaFile.datasync();
  } finally {
    await files.imageFile.close();
    await files.metaFile.close();
  }
}

export interface AddCowInspection {
  readonly path: string;
  readonly header: AddCowHeader;
  readonly imagePath: string;
  readonly backingPath: string | undefined;
  readonly imageLength: number;
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly clusterCount: number;
  readonly allocatedClusters: number;
  readonly allocatedBytes: number;
  /** Allocated cluster runs as [firstCluster, count] pairs (empty when ALL_ALLOCATED). */
  readonly allocatedRuns: ReadonlyArray<readonly [number, number]>;
  /** The raw bitmap bytes (as on disk, tail bits cleared). */
  readonly bitmap: Buffer;
}

/** Read-only look at an add-cow image for the image tool; does not open the backing file. */
export async function inspectAddCow(addCowPath: string): Promise<AddCowInspection> {
  const files = await openAddCowFiles(addCowPath, true);
  try {
    const { header, bitmap, size } = files;
    const runs: Array<[number, number]> = [];
    let allocatedBytes = 0;
    if (!header.allAllocated) {
      for (let c = 0; c < bitmap.bitCount; ) {
        const run = bitmap.runLength(c, bitmap.bitCount - c);
        if (bitmap.get(c)) {
          runs.push([c, run]);
          allocatedBytes += Math.min((c + run) * header.clusterSize, size) - c * header.clusterSize;
        }
        c += run;
      }
    }
    return {
      path: addCowPath,
      header,
      imagePath: files.imagePath,
      backingPath: files.backingPath,
      imageLength: files.imageLength,
      virtualSize: size,
      clusterSize: header.clusterSize,
      clusterCount: bitmap.bitCount,
      allocatedClusters: header.allAllocated ? bitmap.bitCount : bitmap.countSet(),
      allocatedBytes: header.allAllocated ? size : allocatedBytes,
      allocatedRuns: runs,
      bitmap: bitmap.copyBytes(),
    };
  } finally {
    await files.imageFile.close();
    await files.metaFile.close();
  }
}

function clusterBitsOf(clusterSize: number): number {
  const bits = Math.log2(clusterSize);
  if (!Number.isInteger(bits) || bits < ADD_COW_MIN_CLUSTER_BITS || bits > ADD_COW_MAX_CLUSTER_BITS) {
    throw new DeviceError('EINVAL', `cluster size ${clusterSize} must be a power of two from 4096 to 2097152`);
  }
  return bits;
}

async function exists(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined)) !== undefined;
}

/** The record's create: the CLI's and convert's requests, validated here. */
export async function createAddCowImage(addCowPath: string, req: CreateRequest): Promise<CreateResult> {
  let image = req.image;
  const files = [addCowPath];
  if (image === undefined) {
    if (!req.forConvert) throw new Error('create -f add-cow needs --image (the file that holds guest data)');
    image = `${addCowPath.replace(/\.add-cow$/, '')}.img`;
  }
  if (req.forConvert) {
    // convert: the image file is the copy's, never adopted.
    const imagePath = resolveAddCowName(addCowPath, image);
    if (await exists(imagePath)) {
      if (!req.force) throw new Error(`image file "${imagePath}" exists (use --force to overwrite it)`);
      await unlink(imagePath);
    }
    if (req.size !== undefined && req.size % ADD_COW_SECTOR !== 0) throw new Error(`-O add-cow: source size ${req.size} is not a multiple of ${ADD_COW_SECTOR}`);
    files.push(imagePath);
  } else {
    await refuseForeignImageFile(resolveAddCowName(addCowPath, image));
  }
  await createAddCow(
    addCowPath,
    { imageFile: image, backingFile: req.backing, backingFormat: await backingFormatOf(addCowPath, req), clusterSize: req.clusterSize, size: req.size, force: req.force },
    req.openBacking,
  );
  return { files, notes: [] };
}

/**
 * The backing format to record: the operator's, else the default for the backing as the
 * header will resolve it (relative to the .add-cow file): raw, or a foreign image refused.
 */
async function backingFormatOf(addCowPath: string, req: CreateRequest): Promise<string | undefined> {
  if (req.backingFormat !== undefined || req.backing === undefined || !req.defaultBackingFormat) return req.backingFormat;
  return req.defaultBackingFormat(resolveAddCowName(addCowPath, req.backing));
}

/**
 * An existing --image is adopted and WRITTEN as raw guest data: a foreign image there
 * (qcow2, vmdk, ...: formats/foreign-magic.ts) would be destroyed, so it is refused.
 */
async function refuseForeignImageFile(imagePath: string): Promise<void> {
  const foreign = await foreignFormatOf(imagePath);
  if (!foreign) return;
  throw new DeviceError(
    'EINVAL',
    `'${imagePath}' is a ${foreign.title} image: an add-cow image file holds raw guest data and would be written. ` +
      `Convert it first (qemu-img convert -f ${foreign.name} -O raw '${imagePath}' IMAGE.raw) and give that as --image`,
  );
}
