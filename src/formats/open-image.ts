/**
 * openImage: turn a path (+ explicit options) into a ready BlockDevice stack.
 *
 *   openImage("vm.cow")  ──►  CheckedDevice(CowDevice(overlay, openImage(backing, RO, raw)))
 *
 * Format selection: an explicit `format` always wins. Otherwise only an exact magic
 * match selects an overlay format ("OOOM"/"MOOO" → cow, "ACOW" → add-cow); anything
 * else is raw. Backing files are NEVER probed: they are raw unless the operator (or an
 * add-cow header, which records formats) names another format. A guest can write any
 * magic into a raw disk, so probing a backing file would be a security hole.
 *
 * Format modules receive `openBacking` as a parameter (composition, no import cycle).
 */
import { open, stat } from 'node:fs/promises';
import { constants } from 'node:fs';
import { DeviceError } from '../block/block-device.js';
import type { BlockDevice } from '../block/block-device.js';
import { CheckedDevice } from '../block/checked-device.js';
import { FileIo } from '../block/file-io.js';
import { RawFileDevice } from '../block/raw-file-device.js';
import type { PathMapping } from './path-map.js';
import type { ObjectStoreContext } from '../objectstore/open.js';
import { isObjectStoreUri } from '../objectstore/uri.js';

export type ImageFormat = 'raw' | 'cow' | 'add-cow';
export const IMAGE_FORMATS: readonly ImageFormat[] = ['raw', 'cow', 'add-cow'];

export interface OpenImageOptions {
  readOnly?: boolean;
  /** Explicit format; when absent the image's magic decides (never for backing files). */
  format?: ImageFormat;
  /** Override the backing file path recorded in the overlay header (cow: like uml_moo -b). */
  backingFile?: string;
  /** Format of the backing file. Default: raw for cow; the header's value for add-cow. */
  backingFormat?: ImageFormat;
  /** cow: skip the backing mtime check (recovery). */
  ignoreMtime?: boolean;
  /** cow: force a header layout when detection is ambiguous (v2 vs QEMU). */
  layout?: string;
  /** I/O policy of the whole stack (default: a FileIo with every fast path). */
  io?: FileIo;
  /** Rewrites of paths recorded in overlay headers, for the whole chain (path-map.ts). */
  pathMap?: readonly PathMapping[];
  /**
   * Object-store access for s3:// images (as the image itself or anywhere in its chain).
   * An s3:// path is claimed by its scheme, whatever `format` says: it is always a
   * read-only published image (src/objectstore/).
   */
  objectStore?: () => Promise<ObjectStoreContext>;
  /** Internal: this path came from an image header (a backing; --allow-path applies). */
  referenced?: boolean;
  /** Internal: device:inode of every image above this one (cycle detection). */
  chain?: readonly string[];
}

/** Backing chains deeper than this are refused (a crafted chain could open files forever). */
export const MAX_CHAIN_DEPTH = 64;

/** Opens a backing device: always read-only, never probed. Passed to format drivers. */
export type OpenBacking = (path: string, format: ImageFormat) => Promise<BlockDevice>;

export async function openImage(path: string, options: OpenImageOptions = {}): Promise<CheckedDevice> {
  if (isObjectStoreUri(path)) return openObjectStoreImage(path, options);
  const chain = await extendChain(path, options.chain ?? []);
  const format = options.format ?? (await probeFormat(path));
  const io = options.io ?? new FileIo();
  const openBacking: OpenBacking = (backingPath, backingFormat) =>
    openImage(backingPath, { readOnly: true, format: backingFormat, io, pathMap: options.pathMap, objectStore: options.objectStore, referenced: true, chain });
  const driver = await openDriver(path, format, { ...options, io, chain }, openBacking);
  return new CheckedDevice(driver, { readOnly: options.readOnly });
}

/**
 * The chain with `path` appended, refusing a cycle (A → B → A, by device and inode, so
 * links and other spellings count) and chains deeper than MAX_CHAIN_DEPTH.
 */
async function extendChain(path: string, chain: readonly string[]): Promise<string[]> {
  const st = await stat(path).catch(() => undefined);
  if (!st) return [...chain]; // the open itself reports the missing file
  const key = `${st.dev}:${st.ino}`;
  if (chain.includes(key)) throw new DeviceError('ELOOP', `${path}: backing chain cycle: this file is already a layer above it`);
  if (chain.length >= MAX_CHAIN_DEPTH) throw new DeviceError('ELOOP', `${path}: backing chain deeper than ${MAX_CHAIN_DEPTH} layers`);
  return [...chain, key];
}

async function openDriver(
  path: string,
  format: ImageFormat,
  options: OpenImageOptions,
  openBacking: OpenBacking,
): Promise<BlockDevice> {
  switch (format) {
    case 'raw':
      return RawFileDevice.open(path, { readOnly: options.readOnly, io: options.io, referenced: options.referenced });
    case 'cow': {
      const { openCow } = await import('./cow/index.js');
      // A backing named *.snap-N.cow is a snapshot layer: cow, with the configured
      // backing format passed further down (docs in cow/cow-layers.ts).
      const { snapshotBackingOf } = await import('./cow/cow-layers.js');
      if (!options.backingFile && (await snapshotBackingOf(path).catch(() => undefined))) {
        const below = (p: string) =>
          openImage(p, { readOnly: true, format: 'cow', backingFormat: options.backingFormat, io: options.io, ignoreMtime: options.ignoreMtime, referenced: true, chain: options.chain });
        return openCow(path, { ...options, backingFormat: 'cow' }, below);
      }
      return openCow(path, options, openBacking);
    }
    case 'add-cow': {
      const { openAddCow } = await import('./add-cow/index.js');
      return openAddCow(path, options, openBacking);
    }
  }
}

async function openObjectStoreImage(uri: string, options: OpenImageOptions): Promise<CheckedDevice> {
  if (!options.objectStore) throw new Error(`${uri}: object-store images need object-store access (this command has no --s3-endpoint/--cache-dir options)`);
  if (options.readOnly === false) throw new Error(`${uri}: a published image is read-only; serve it with --base and --overlay-dir/--ephemeral, or read-only`);
  const { openObjectStoreBase } = await import('../objectstore/open.js');
  return new CheckedDevice(await openObjectStoreBase(uri, await options.objectStore()), { readOnly: true });
}

/** Magic-only detection for the image the operator named (not for backing files). */
export async function probeFormat(path: string): Promise<ImageFormat> {
  // O_NONBLOCK: a FIFO must not block the open (it is refused just below).
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const st = await fh.stat();
    if (!st.isFile() && !st.isBlockDevice()) throw new DeviceError('EINVAL', `${path}: not a regular file: refused`);
    const head = Buffer.alloc(8);
    const { bytesRead } = await fh.read(head, 0, 8, 0);
    if (bytesRead >= 8) {
      const magicBE = head.readUInt32BE(0);
      if (magicBE === 0x4f4f4f4d || magicBE === 0x4d4f4f4f) return 'cow';
      if (head.toString('latin1', 0, 4) === 'ACOW') return 'add-cow';
    }
    return 'raw';
  } finally {
    await fh.close();
  }
}
