/**
 * `cownbd convert SRC -O raw|cow|add-cow DST [...]`: copy the full view of SRC (any chain)
 * into a new image.
 *
 *   -O raw      flatten (sparse: zero ranges from blockStatus and all-zero 4 KiB blocks
 *               are holes), via a temp file renamed into place (flatten.ts).
 *   -O cow      new UML v3 overlay on --backing B (created like uml_mkcow), holding only
 *               the 512-byte sectors where SRC differs from B: the smallest overlay whose
 *               view equals SRC. SRC's size must equal the overlay's virtual size
 *               (roundup(size of B, 512)).
 *   -O add-cow  new add-cow (--image IMG, default DST with ".img"), on --backing B (only
 *               clusters that differ are allocated) or without a backing file
 *               (ALL_ALLOCATED: the image file is a sparse copy of SRC).
 *
 * The new overlay is written through its own driver (data, then bitmap on flush), so it is
 * crash-consistent at every point; an interrupt or error deletes the files convert created.
 */
import { stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import { createAddCow } from '../formats/add-cow/index.js';
import { createCow } from '../formats/cow/index.js';
import { openImage, type ImageFormat } from '../formats/open-image.js';
import { openChain, type ChainOptions } from './chain.js';
import type { ToolContext } from './commit.js';
import { ToolError } from './errors.js';
import { flattenToRaw, refuseExisting } from './flatten.js';
import { CHUNK, differingRuns, knownZero, nonZeroRuns, walk } from './stream.js';

export interface ConvertOptions extends ChainOptions {
  outputFormat: ImageFormat;
  /** Backing file of the NEW overlay (-O cow: required; -O add-cow: optional). */
  outBacking?: string;
  outBackingFormat?: ImageFormat;
  image?: string;
  clusterSize?: number;
  force?: boolean;
}

export interface ConvertJson {
  command: 'convert';
  source: string;
  target: string;
  outputFormat: string;
  virtualSize: number;
  bytesWritten: number;
  elapsedMs: number;
}

export async function runConvert(src: string, dst: string, options: ConvertOptions, ctx: ToolContext): Promise<ConvertJson> {
  const started = Date.now();
  const dev = await openChain(src, options);
  try {
    let bytesWritten: number;
    const label = `convert ${path.basename(src)}`;
    if (options.outputFormat === 'raw') {
      if (options.outBacking) throw new ToolError('-O raw has no backing file (drop --backing)');
      bytesWritten = (await flattenToRaw(dev, dst, dev.size, { force: options.force, progress: ctx.makeProgress(label, dev.size), interrupt: ctx.interrupt })).bytesWritten;
    } else {
      bytesWritten = await convertToOverlay(dev, dst, options, ctx, label);
    }
    return { command: 'convert', source: src, target: dst, outputFormat: options.outputFormat, virtualSize: dev.size, bytesWritten, elapsedMs: Date.now() - started };
  } finally {
    await dev.close();
  }
}

async function convertToOverlay(src: BlockDevice, dst: string, options: ConvertOptions, ctx: ToolContext, label: string): Promise<number> {
  await refuseExisting(dst, options.force);
  const created: string[] = [];
  let out: BlockDevice | undefined;
  let ok = false;
  try {
    if (options.outputFormat === 'cow') {
      if (!options.outBacking) throw new ToolError('-O cow needs --backing BASE (a cow overlay always has a backing file)');
      if (options.outBackingFormat && options.outBackingFormat !== 'raw') {
        throw new ToolError(`-O cow: backing format ${options.outBackingFormat} cannot be recorded in a cow header; use a raw backing file`);
      }
      if (options.image !== undefined || options.clusterSize !== undefined) throw new ToolError('--image and --cluster-size apply to -O add-cow only');
      const bst = await stat(options.outBacking).catch(() => undefined);
      if (!bst) throw new ToolError(`backing file "${options.outBacking}" does not exist`);
      const virtual = Math.ceil(bst.size / 512) * 512;
      if (virtual !== src.size) {
        throw new ToolError(`-O cow: source virtual size ${src.size} differs from the overlay's size ${virtual} (backing "${options.outBacking}" is ${bst.size} bytes; a cow overlay is always the size of its backing file)`);
      }
      await createCow(dst, { backingFile: options.outBacking, force: options.force });
      created.push(dst);
      out = await openImage(dst, { format: 'cow', readOnly: false, io: options.io });
    } else {
      const image = options.image ?? `${dst.replace(/\.add-cow$/, '')}.img`;
      const imagePath = path.resolve(path.dirname(path.resolve(dst)), image);
      if (await stat(imagePath).catch(() => undefined)) {
        if (!options.force) throw new ToolError(`image file "${imagePath}" exists (use --force to overwrite it)`);
        await unlink(imagePath);
      }
      if (src.size % 512 !== 0) throw new ToolError(`-O add-cow: source size ${src.size} is not a multiple of 512`);
      await createAddCow(dst, {
        imageFile: image,
        backingFile: options.outBacking,
        backingFormat: options.outBackingFormat,
        clusterSize: options.clusterSize,
        size: src.size,
        force: options.force,
      });
      created.push(dst, imagePath);
      out = await openImage(dst, { format: 'add-cow', readOnly: false, io: options.io });
    }
    const bytesWritten = await copyDifferences(src, out, options.outBacking !== undefined, ctx, label);
    await out.flush();
    ok = true;
    return bytesWritten;
  } finally {
    await out?.close().catch(() => {});
    if (!ok) for (const f of created) await unlink(f).catch(() => {});
  }
}

/**
 * Write into `out` every part of `src` that `out` does not already show: with a backing,
 * compare against out's current view (= its backing) at the out's allocation granularity;
 * without one, write the non-zero 4 KiB blocks.
 */
async function copyDifferences(src: BlockDevice, out: BlockDevice, hasBacking: boolean, ctx: ToolContext, label: string): Promise<number> {
  const progress = ctx.makeProgress(label, src.size);
  const unit = hasBacking ? out.preferredBlockSize === 4096 ? 512 : out.preferredBlockSize : 4096;
  const a = Buffer.allocUnsafe(CHUNK);
  const b = Buffer.allocUnsafe(CHUNK);
  let written = 0;
  try {
    for await (const r of walk(src, 0, src.size, alignChunk(unit))) {
      ctx.interrupt.check();
      if (r.zero && !hasBacking) {
        progress.update(r.offset + r.length);
        continue;
      }
      for (let pos = r.offset; pos < r.offset + r.length; pos += CHUNK) {
        const n = Math.min(CHUNK, r.offset + r.length - pos);
        // Zeros over a part of the new overlay that already reads as zeros: nothing to do.
        if (r.zero && (await knownZero(out, pos, n))) continue;
        const mine = a.subarray(0, n);
        if (r.zero) mine.fill(0);
        else await src.read(pos, mine);
        let runs: Iterable<[number, number]>;
        if (hasBacking) {
          const theirs = b.subarray(0, n);
          await out.read(pos, theirs);
          runs = differingRuns(mine, theirs, unit);
        } else runs = nonZeroRuns(mine, unit);
        for (const [s, e] of runs) {
          await out.write(pos + s, mine.subarray(s, e));
          written += e - s;
        }
        ctx.interrupt.check();
      }
      progress.update(r.offset + r.length);
    }
  } finally {
    progress.finish();
  }
  return written;
}

/** Chunk size that is a multiple of the unit (clusters up to 2 MiB divide 4 MiB). */
function alignChunk(unit: number): number {
  return Math.max(unit, Math.floor(CHUNK / unit) * unit);
}
