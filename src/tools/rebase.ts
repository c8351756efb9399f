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
 * Header rewrite: the format's record (FormatRecord.rebase: src/formats/cow/cow-layer.ts,
 * src/formats/add-cow/add-cow-layer.ts), ALWAYS in the overlay's own layout, never UML's
 * "switch" to v3 (which loses data); it calls back into copyDivergent below for safe mode.
 * The header write is one pwrite + fsync (not atomic across sectors for 4 KiB headers; the
 * data copied in safe mode is already durable before it starts).
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import { FileIo } from '../block/file-io.js';
import { backingOpener, openImage, recordFor, type ImageFormat } from '../formats/open-image.js';
import { namedBackingFormat } from '../formats/registry.js';
import { openChain, type ChainOptions } from './chain.js';
import type { ToolContext } from './commit.js';
import { ToolError } from './errors.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
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
  const record = await recordFor(file, options.format);
  if (!record.rebase) throw new ToolError(`${file}: a ${record.name} image has no backing file to change`);
  const format = record.name;
  const newPath = isObjectStoreUri(options.newBacking) ? await pinVersion(options.newBacking, options) : path.resolve(options.newBacking);
  if (!isObjectStoreUri(newPath) && !(await stat(newPath).catch(() => undefined))) throw new ToolError(`new backing file "${options.newBacking}" does not exist`);
  // A new backing named without -F is raw, unless it is a foreign image (qcow2, vmdk, ...): refused (registry.ts).
  if (options.newBackingFormat === undefined && !isObjectStoreUri(newPath)) await namedBackingFormat(options.newBacking, undefined, '-F raw (--backing-format raw)');
  const r = await record.rebase(file, {
    newBacking: options.newBacking,
    newPath,
    newBackingFormat: options.newBackingFormat,
    unsafe: Boolean(options.unsafe),
    force: options.force,
    layout: options.layout,
    backingFile: options.backingFile,
    ignoreMtime: options.ignoreMtime,
    openBacking: backingOpener({ io: options.io ?? new FileIo(), objectStore: options.objectStore }),
    copyDivergent: (newFormat) => copyDivergent(file, format, newPath, newFormat, options, ctx),
  });
  return { command: 'rebase', overlay: file, format, newBacking: newPath, unsafe: Boolean(options.unsafe), ...r, elapsedMs: Date.now() - started };
}

/**
 * `-b s3://BUCKET/PREFIX[@VERSION]`: the version the overlay will record (the newest when
 * none is named). Safe mode then compares the old view with that version like any backing
 * (every chunk the overlay does not cover is read from both; docs/object-store.md).
 */
async function pinVersion(address: string, options: RebaseOptions): Promise<string> {
  if (!options.objectStore) throw new ToolError(`new backing ${address}: no object-store access`);
  const { formatObjectStoreUri } = await import('../objectstore/uri.js');
  const { uri } = await (await options.objectStore()).manifests.resolve(address);
  return formatObjectStoreUri(uri);
}

/** Safe mode: copy old-view data into the overlay wherever NEW differs and the overlay has no data. */
async function copyDivergent(file: string, format: ImageFormat, newPath: string, newFormat: ImageFormat, options: RebaseOptions, ctx: ToolContext): Promise<number> {
  const dev = await openChain(file, { ...options, format }, false);
  let nb: BlockDevice | undefined;
  try {
    nb = await openImage(newPath, { format: newFormat, readOnly: true, io: options.io, objectStore: options.objectStore });
    const top = topLayer(dev);
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
