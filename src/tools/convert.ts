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
import { unlink } from 'node:fs/promises';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import { createImage, openImage, type ImageFormat } from '../formats/open-image.js';
import { creatableFormats, formatByName } from '../formats/registry.js';
import { openChain, type ChainOptions } from './chain.js';
import type { ToolContext } from './commit.js';
import { ToolError } from './errors.js';
import { flattenToRaw, refuseExisting } from './flatten.js';
import { topLayer } from './layers.js';
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
    // A read-only format (qcow2) is no output: "not an overlay" must not mean "write raw".
    if (!formatByName(options.outputFormat).create) throw new ToolError(`-O ${options.outputFormat}: cownbd cannot write ${options.outputFormat} images (it reads them); use -O ${creatableFormats().join(', -O ')}`);
    if (!formatByName(options.outputFormat).overlay) {
      if (options.outBacking) throw new ToolError(`-O ${options.outputFormat} has no backing file (drop --backing)`);
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
    const made = await createImage(options.outputFormat, dst, {
      backing: options.outBacking,
      backingFormat: options.outBackingFormat,
      image: options.image,
      clusterSize: options.clusterSize,
      size: src.size,
      force: options.force,
      forConvert: true,
      io: options.io,
      objectStore: options.objectStore,
    });
    created.push(...made.files);
    for (const note of made.notes) ctx.notify?.(note);
    out = await openImage(dst, { format: options.outputFormat, backingFormat: options.outBackingFormat, readOnly: false, io: options.io, objectStore: options.objectStore });
    const unit = options.outBacking !== undefined ? topLayer(out).unit : 4096;
    const bytesWritten = await copyDifferences(src, out, options.outBacking !== undefined, unit, ctx, label);
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
async function copyDifferences(src: BlockDevice, out: BlockDevice, hasBacking: boolean, unit: number, ctx: ToolContext, label: string): Promise<number> {
  const progress = ctx.makeProgress(label, src.size);
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
