/**
 * `cownbd rebase FILE --backing NEW [--backing-format F] [--unsafe]`: point an overlay at a
 * different backing file without changing what the overlay shows.
 *
 * Safe mode (default): the overlay is opened on its CURRENT backing (which must still
 * validate). For every sector (cow) / cluster (add-cow) NOT allocated in the overlay, the
 * old view is compared with NEW; where they differ, the old data is written into the
 * overlay (through its driver: data first, bitmap on flush). Then the header is rewritten.
 * --unsafe only rewrites the header (like qemu-img rebase -u); the old backing may be gone.
 *
 * Header rewrite (docs/cow-format.md#c4): ALWAYS in the overlay's own layout, same alignment,
 * bitmap and data offsets; never UML's "switch" (which writes v3 over v1/v2 and loses data).
 *   cow: path absolutized like uml_mkcow (UML layouts) or stored as given (QEMU layouts,
 *        relative to the cow's directory); mtime and size from NEW; NEW must give the same
 *        geometry (virtual size roundup(size, 512), bitmap length, data offset); the path
 *        must fit the layout's field (v1: 255 bytes, QEMU: 1023, v2/v3: 4095).
 *   add-cow: the name area is re-encoded (backing name, then image name, at 76); a relative
 *        NEW is stored relative to the .add-cow file's directory; HEADER_SIZE is unchanged.
 * The header write is one pwrite + fsync (not atomic across sectors for 4 KiB headers; the
 * data copied in safe mode is already durable before it starts).
 */
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import { readFully, writeFully } from '../block/file-io.js';
import { encodeAddCowHeader, inspectAddCow } from '../formats/add-cow/index.js';
import { checkDistinctFiles } from '../formats/add-cow/add-cow-open.js';
import {
  absolutizeLikeUml,
  cowGeometry,
  encodeCowHeader,
  inspectCowFile,
  statBacking,
  type CowHeader,
} from '../formats/cow/index.js';
import { openImage, probeFormat, type ImageFormat } from '../formats/open-image.js';
import { openChain, type ChainOptions } from './chain.js';
import { remoteBackingStat } from '../objectstore/open.js';
import type { ToolContext } from './commit.js';
import { ToolError } from './errors.js';
import { topLayer, type TopLayer } from './layers.js';
import { CHUNK, differingRuns, knownZero } from './stream.js';

export interface RebaseOptions extends ChainOptions {
  newBacking: string;
  newBackingFormat?: ImageFormat;
  unsafe?: boolean;
  /** cow: accept a NEW whose mtime does not fit 32 bits (docs/cow-format.md#c3). */
  force?: boolean;
}

export interface RebaseJson {
  command: 'rebase';
  overlay: string;
  format: string;
  oldBacking: string | null;
  newBacking: string;
  /** What the header now stores. */
  storedBacking: string;
  unsafe: boolean;
  bytesCopied: number;
  elapsedMs: number;
}

export async function runRebase(file: string, options: RebaseOptions, ctx: ToolContext): Promise<RebaseJson> {
  const started = Date.now();
  const format = options.format ?? (await probeFormat(file));
  if (format === 'raw') throw new ToolError(`${file}: a raw image has no backing file to change`);
  const newPath = path.resolve(options.newBacking);
  if (!(await stat(newPath).catch(() => undefined))) throw new ToolError(`new backing file "${options.newBacking}" does not exist`);
  const r = format === 'cow' ? await rebaseCow(file, newPath, options, ctx) : await rebaseAddCow(file, newPath, options, ctx);
  return { command: 'rebase', overlay: file, format, newBacking: newPath, unsafe: Boolean(options.unsafe), ...r, elapsedMs: Date.now() - started };
}

type Partial = Pick<RebaseJson, 'oldBacking' | 'storedBacking' | 'bytesCopied'>;

async function rebaseCow(file: string, newPath: string, options: RebaseOptions, ctx: ToolContext): Promise<Partial> {
  if (options.newBackingFormat && options.newBackingFormat !== 'raw') {
    throw new ToolError(`a cow header cannot record backing format ${options.newBackingFormat}; rebase onto a raw file`);
  }
  const insp = await inspectCowFile(file, {
    layout: options.layout,
    backingFile: options.backingFile,
    ignoreMtime: options.ignoreMtime,
    validateBacking: !options.unsafe,
    ...(options.objectStore ? { remoteBackingStat: remoteBackingStat(options.objectStore) } : {}),
  });
  const old = insp.header;
  const st = await statBacking(newPath);
  const qemu = old.layout.startsWith('qemu');
  if (!qemu && (st.mtime < 0 || st.mtime >= 2 ** 32) && !options.force) {
    throw new ToolError(`new backing "${newPath}" mtime ${st.mtime} does not fit the header's 32-bit field: UML and uml_moo would refuse the overlay (--force to write it anyway)`);
  }
  const stored = qemu ? options.newBacking : await absolutizeLikeUml(options.newBacking);
  const next: CowHeader = { ...old, backingFile: stored, size: st.size, mtime: ((st.mtime % 2 ** 32) + 2 ** 32) % 2 ** 32 };
  const g0 = insp.geometry;
  const g1 = cowGeometry(next);
  if (g1.virtualSize !== g0.virtualSize || g1.bitmapLength !== g0.bitmapLength || g1.dataOffset !== g0.dataOffset || g1.bitmapOffset !== g0.bitmapOffset) {
    throw new ToolError(
      `${file}: new backing "${newPath}" is ${st.size} bytes; the ${old.layout} overlay needs a backing of ${old.size} bytes (virtual size ${g0.virtualSize}, data offset ${g0.dataOffset}): its layout would change`,
    );
  }
  let bytes: Buffer;
  try {
    bytes = encodeCowHeader(next);
  } catch (err) {
    throw new ToolError(`${file}: cannot store new backing path in the ${old.layout} header: ${(err as Error).message}`);
  }
  let copied = 0;
  if (!options.unsafe) {
    copied = await copyDivergent(file, 'cow', newPath, 'raw', options, ctx);
  }
  await rewriteHeader(file, bytes, old.headerSize);
  return { oldBacking: insp.backingFile.resolved, storedBacking: stored, bytesCopied: copied };
}

async function rebaseAddCow(file: string, newPath: string, options: RebaseOptions, ctx: ToolContext): Promise<Partial> {
  const insp = await inspectAddCow(file);
  const h = insp.header;
  await checkDistinctFiles(file, insp.imagePath, newPath);
  const dir = path.dirname(path.resolve(file));
  const stored = path.isAbsolute(options.newBacking) ? options.newBacking : path.relative(dir, newPath);
  const newFormat = options.newBackingFormat ?? 'raw';
  let bytes: Buffer;
  try {
    bytes = encodeAddCowHeader({
      clusterBits: h.clusterBits,
      imageName: h.imageName,
      imageFormat: h.imageFormat,
      backingName: stored,
      backingFormat: newFormat,
      compatFeatures: h.compatFeatures,
    });
  } catch (err) {
    throw new ToolError(`${file}: cannot store new backing name: ${(err as Error).message}`);
  }
  let copied = 0;
  if (!options.unsafe && !h.allAllocated) copied = await copyDivergent(file, 'add-cow', newPath, newFormat, options, ctx);
  await rewriteHeader(file, bytes, h.headerSize);
  return { oldBacking: insp.backingPath ?? null, storedBacking: stored, bytesCopied: copied };
}

/** Safe mode: copy old-view data into the overlay wherever NEW differs and the overlay has no data. */
async function copyDivergent(file: string, format: ImageFormat, newPath: string, newFormat: ImageFormat, options: RebaseOptions, ctx: ToolContext): Promise<number> {
  const dev = await openChain(file, { ...options, format }, false);
  let nb: BlockDevice | undefined;
  try {
    nb = await openImage(newPath, { format: newFormat, readOnly: true, io: options.io });
    const top = topLayer(dev, options.backingFormat);
    const progress = ctx.makeProgress(`rebase ${path.basename(file)}`, dev.size);
    const a = Buffer.allocUnsafe(CHUNK);
    const b = Buffer.allocUnsafe(CHUNK);
    let copied = 0;
    try {
      for (const [start, end] of unallocated(top, dev.size)) {
        for (let pos = start; pos < end; pos += CHUNK) {
          ctx.interrupt.check();
          const n = Math.min(CHUNK, end - pos);
          const inNewEnd = Math.max(0, Math.min(n, nb.size - pos));
          // Both sides known to be zeros (sparse multi-GiB images): nothing to compare.
          if ((await knownZero(dev, pos, n)) && (await knownZero(nb, pos, inNewEnd))) {
            progress.update(pos + n);
            continue;
          }
          const oldView = a.subarray(0, n);
          const newView = b.subarray(0, n);
          newView.fill(0);
          const inNew = Math.max(0, Math.min(n, nb.size - pos));
          await Promise.all([dev.read(pos, oldView), inNew > 0 ? nb.read(pos, newView.subarray(0, inNew)) : undefined]);
          for (const [s, e] of differingRuns(oldView, newView, top.unit)) {
            await dev.write(pos + s, oldView.subarray(s, e));
            copied += e - s;
          }
          progress.update(pos + n);
        }
      }
    } catch (err) {
      // Interrupted or failed: keep what was copied (data, then bitmap). The header still
      // names the old backing, and the copied sectors equal it: the view is unchanged.
      await dev.flush().catch(() => {});
      throw err;
    } finally {
      progress.finish();
    }
    await dev.flush();
    return copied;
  } finally {
    await nb?.close();
    await dev.close();
  }
}

/** Complement of the top layer's allocated runs within [0, size). */
function* unallocated(top: TopLayer, size: number): Generator<[number, number]> {
  let pos = 0;
  for (const [s, e] of top.runs()) {
    if (s > pos) yield [pos, s];
    pos = e;
  }
  if (pos < size) yield [pos, size];
}

async function rewriteHeader(file: string, bytes: Buffer, expectedSize: number): Promise<void> {
  if (bytes.length !== expectedSize) throw new Error(`internal: header size changed (${expectedSize} → ${bytes.length})`);
  const fh = await open(file, 'r+');
  try {
    const current = Buffer.alloc(bytes.length);
    await readFully(fh, 0, current);
    if (!current.equals(bytes)) {
      await writeFully(fh, 0, bytes);
      await fh.sync();
    }
  } finally {
    await fh.close();
  }
}
