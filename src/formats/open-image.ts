/**
 * openImage: turn an image spec (+ explicit options) into a ready BlockDevice stack,
 * through the format registry.
 *
 *   openImage("vm.cow")  ──►  CheckedDevice(CowDevice(overlay, openImage(backing, RO, raw)))
 *
 * Format selection: an explicit `format` always wins; otherwise the registry claims,
 * probes, or falls back to raw (registry.ts). Backing files are NEVER probed: they are
 * opened by the format their overlay records or the operator names (a guest can write
 * any magic into a raw disk, so probing a backing would be a security hole).
 *
 * Format records receive `openBacking` as a parameter and never import this module, so
 * there is no import cycle, static or dynamic (.dependency-cruiser.cjs checks).
 * Also here: the convenience entry points that need an opener (createImage, createAddCow).
 */
import { stat } from 'node:fs/promises';
import { DeviceError } from '../block/block-device.js';
import { CheckedDevice } from '../block/checked-device.js';
import { FileIo } from '../block/file-io.js';
import { createAddCow as createAddCowWith, type CreateAddCowOptions } from './add-cow/add-cow-create.js';
import type { ObjectStoreContext } from '../objectstore/open.js';
import type { CreateRequest, CreateResult, FormatRecord, OpenBacking, StackContext } from './format-record.js';
import type { PathMapping } from './path-map.js';
import { claimingRecord, detectFormat, FALLBACK_FORMAT, FORMAT_NAMES, formatByName, namedBackingFormat, probeImage } from './registry.js';

/** A format name known to the registry (registry.ts FORMAT_NAMES). */
export type ImageFormat = string;

/** The registry's format names (kept under this name for existing callers). */
export const IMAGE_FORMATS: readonly ImageFormat[] = FORMAT_NAMES;

export interface OpenImageOptions {
  readOnly?: boolean;
  /** Explicit format; when absent the registry decides (never for backing files). */
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
   * Object-store access for s3:// images (as the image itself or anywhere in its chain);
   * such specs are claimed by the s3 record (src/formats/s3/), whatever `format` says.
   */
  objectStore?: () => Promise<ObjectStoreContext>;
  /** Internal: this path came from an image header (a backing; --allow-path applies). */
  referenced?: boolean;
  /** Internal: device:inode of every image above this one (cycle detection). */
  chain?: readonly string[];
}

/** The record for `spec`: a record that claims it, else `format`, else the registry's detection. */
export function recordFor(spec: string, format?: string): Promise<FormatRecord> {
  const claimed = claimingRecord(spec);
  if (claimed) return Promise.resolve(claimed);
  return format !== undefined ? Promise.resolve(formatByName(format)) : detectFormat(spec);
}

/** Backing chains deeper than this are refused (a crafted chain could open files forever). */
export const MAX_CHAIN_DEPTH = 64;

/** Opens backings read-only, by the format named (or claimed), sharing the stack's context. */
export function backingOpener(stack: StackContext | FileIo): OpenBacking {
  return openerBelow(stack instanceof FileIo ? { io: stack } : stack, []);
}

/** The openBacking a layer gets: the layers below share the stack and extend the chain. */
function openerBelow(stack: StackContext, chain: readonly string[]): OpenBacking {
  return (spec, format, more = {}) => openLayer(spec, { readOnly: true, format, ...more }, stack, chain, true);
}

function stackOf(options: { io?: FileIo; pathMap?: readonly PathMapping[]; objectStore?: () => Promise<ObjectStoreContext> }): StackContext {
  return { io: options.io ?? new FileIo(), pathMap: options.pathMap, objectStore: options.objectStore };
}

export async function openImage(spec: string, options: OpenImageOptions = {}): Promise<CheckedDevice> {
  return openLayer(spec, options, stackOf(options), options.chain ?? [], options.referenced ?? false);
}

/** One layer: its record, its driver over openBacking for the layers below, CheckedDevice. */
async function openLayer(spec: string, options: OpenImageOptions, stack: StackContext, above: readonly string[], referenced: boolean): Promise<CheckedDevice> {
  const record = await recordFor(spec, options.format);
  const chain = await extendChain(spec, above);
  const driver = await record.open(spec, {
    ...stack,
    readOnly: Boolean(options.readOnly),
    referenced,
    openBacking: openerBelow(stack, chain),
    knownFormats: FORMAT_NAMES,
    backingFile: options.backingFile,
    backingFormat: options.backingFormat,
    ignoreMtime: options.ignoreMtime,
    layout: options.layout,
  });
  return new CheckedDevice(driver, { readOnly: options.readOnly });
}

/**
 * The chain with `spec` appended, refusing a cycle (A → B → A, by device and inode, so
 * links and other spellings count) and chains deeper than MAX_CHAIN_DEPTH. A spec that is
 * no local file (an s3:// image) adds nothing.
 */
async function extendChain(spec: string, chain: readonly string[]): Promise<string[]> {
  const st = await stat(spec).catch(() => undefined);
  if (!st) return [...chain]; // the open itself reports the missing file
  const key = `${st.dev}:${st.ino}`;
  if (chain.includes(key)) throw new DeviceError('ELOOP', `${spec}: backing chain cycle: this file is already a layer above it`);
  if (chain.length >= MAX_CHAIN_DEPTH) throw new DeviceError('ELOOP', `${spec}: backing chain deeper than ${MAX_CHAIN_DEPTH} layers`);
  return [...chain, key];
}

/**
 * Magic-only detection for the image the operator named (not for backing files): a
 * record's name, or the qemu-img name of a foreign format (qcow2, vmdk, ...) that
 * openImage refuses without an explicit format.
 */
export async function probeFormat(spec: string): Promise<string> {
  const p = await probeImage(spec);
  return p.record ? p.record.name : p.foreign.name;
}

/** Create an image of `format` through its record; backings are measured by opening them. */
export async function createImage(
  format: string,
  path: string,
  req: Omit<CreateRequest, 'io' | 'openBacking'> & { io?: FileIo; objectStore?: () => Promise<ObjectStoreContext> },
): Promise<CreateResult> {
  const record = formatByName(format);
  if (!record.create) throw new Error(`cannot create ${format} images (can: ${FORMAT_NAMES.filter((n) => formatByName(n).create).join(', ')})`);
  const stack = stackOf(req);
  const openBacking = backingOpener(stack);
  // A backing named without -F is raw, unless it carries a foreign magic: then refused (registry.ts).
  const defaultBackingFormat = (backing: string) => namedBackingFormat(backing, undefined, '-F raw (--backing-format raw)');
  return record.create(path, { ...req, backing: await pinnedBacking(req.backing, req.backingFormat, openBacking), io: stack.io, openBacking, defaultBackingFormat });
}

/**
 * A backing claimed by a record (an s3:// image) is recorded as its device names itself:
 * pinned to the version that exists now. It is a published image: no format applies.
 */
async function pinnedBacking(backing: string | undefined, backingFormat: string | undefined, openBacking: OpenBacking): Promise<string | undefined> {
  if (backing === undefined || !claimingRecord(backing)) return backing;
  if (backingFormat && backingFormat !== FALLBACK_FORMAT.name) throw new Error(`${backing}: a published image takes no --backing-format (drop it)`);
  const dev = await openBacking(backing, FALLBACK_FORMAT.name);
  try {
    return dev.describe().path ?? backing;
  } finally {
    await dev.close();
  }
}

/** createAddCow with this module's opener (a size taken from the backing is its device's). */
export function createAddCow(addCowPath: string, options: CreateAddCowOptions, io: FileIo = new FileIo()): Promise<void> {
  return createAddCowWith(addCowPath, options, backingOpener(io));
}
