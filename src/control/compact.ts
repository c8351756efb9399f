/**
 * Compaction of an overlay's snapshot layers (issue 26, item 3): merge the OLDEST frozen
 * layers of a chain into one, so an export snapshotted every night stays under
 * --max-snapshots (snapshot-limit.ts). The live top is never touched. Layout of a chain:
 * src/formats/cow/cow-layers.ts.
 *
 *   chain, oldest first:  L1 … Lm … Lk, the top over Lk;  merged: L1..Lm (m = k - keep + 1)
 *   1. TMP = Lm.compact-tmp, a copy of L1, sparse (its header names the base, L1's size
 *      and mtime)
 *   2. into TMP, opened as a cow over the base, write every sector L2..Lm hold, with the
 *      bytes Lm's chain reads there (the disk as Lm shows it); flush, fsync
 *   3. set TMP's mtime to the one the layer above Lm records for Lm (whole seconds, as
 *      commitCowLayer does), fsync again
 *   4. rename TMP over Lm, fsync the directory          ← the one switching step
 *   5. unlink L1..Lm-1 (no header names them any more), fsync the directory
 *
 * Crash safety (kill -9 anywhere): before 4 the old chain is untouched, plus a stray TMP
 * that nothing opens (the next compaction removes it). From 4 on, the layer above finds
 * under Lm's name a file of the same virtual size with the recorded mtime, showing the
 * same bytes; the older layers are orphans no header names, deleted by step 5 or by the
 * next compaction (leftovers()). Only the overlay's own layer files are touched
 * (requireOwnLayers). Frozen layers are never written, and the base never is:
 * only TMP is opened writable.
 *
 * The caller runs this with nobody using the chain (Operations.compact holds the export
 * and closes its device first): the files of L1..Lm are replaced and deleted.
 */
import { open as openFile, rename, unlink, utimes } from 'node:fs/promises';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import { isSnapshotLayer, readCowBacking, recordedMtime, snapshotLayerFiles, syncDir, syncFile } from '../formats/cow/cow-layers.js';
import { topLayer } from '../tools/layers.js';

/** Opens a cow file with its chain below, as the server would (writable only for TMP). */
export type OpenLayer = (file: string, writable: boolean) => Promise<BlockDevice>;

export interface CompactResult {
  /** The frozen layers before, oldest first. */
  readonly before: string[];
  /** The frozen layers after, oldest first. */
  readonly after: string[];
  /** The layer now holding the merged data (undefined when nothing was merged). */
  readonly merged?: string;
  /** Files deleted: merged layers and orphans of an interrupted compaction. */
  readonly deleted: string[];
  /** Bytes of disk data copied into the merged layer. */
  readonly bytesCopied: number;
}

const CHUNK = 1 << 20;

/** The frozen layers the top's chain really uses, oldest first (read from the headers). */
export async function chainLayers(top: string): Promise<string[]> {
  const out: string[] = [];
  let file = path.resolve(top);
  // Bounded: a chain has at most 64 layers (open-image.ts MAX_CHAIN_DEPTH).
  for (let i = 0; i < 64; i++) {
    const below = (await readCowBacking(file)).path;
    if (!isSnapshotLayer(below)) return out.reverse();
    out.push(below);
    file = below;
  }
  throw new Error(`${top}: more than 64 snapshot layers below it`);
}

/**
 * Files an interrupted compaction leaves: stray temps, and the top's own snapshot layers
 * numbered BELOW the chain's oldest layer (merged, then not yet unlinked). Nothing else
 * is ever deleted: a layer file above that number is not ours to judge.
 */
async function leftovers(top: string, used: string[]): Promise<string[]> {
  const own = await snapshotLayerFiles(top);
  const oldest = own.indexOf(used[0]!);
  return [...own.slice(0, Math.max(oldest, 0)), ...used.map((f) => `${f}.compact-tmp`)];
}

/**
 * Refuse a chain whose frozen layers are not the top's own STEM.snap-N.cow files beside
 * it, oldest first (a copied overlay whose headers still name the original's layers,
 * layers renamed by hand): compaction replaces and deletes files, only its own.
 */
async function requireOwnLayers(top: string, used: string[]): Promise<void> {
  const own = await snapshotLayerFiles(top);
  const start = own.indexOf(used[0]!);
  const stranger = used.find((f, i) => own[start + i] !== f);
  if (start < 0 || stranger !== undefined) {
    throw new CompactRefused(`${top}: its chain uses ${stranger ?? used[0]}, which is not one of its own snapshot layers (${own.map((f) => path.basename(f)).join(', ') || 'none'} beside it, oldest first): compaction only merges an overlay's own layers`);
  }
}

/** The chain is not one compaction may change (the API answers 409). */
export class CompactRefused extends Error {
  override name = 'CompactRefused';
}

/** Merge the oldest layers of `top` until at most `keep` (≥ 1) frozen layers remain. */
export async function compactLayers(top: string, keep: number, open: OpenLayer): Promise<CompactResult> {
  if (!Number.isInteger(keep) || keep < 1) throw new Error(`keep must be an integer of at least 1 (got ${keep})`);
  const before = await chainLayers(top);
  if (before.length === 0) throw new CompactRefused(`${top}: its chain has no snapshot layers: nothing to compact`);
  await requireOwnLayers(top, before);
  const deleted: string[] = [];
  for (const f of await leftovers(top, before)) if (await unlinkIfExists(f)) deleted.push(f);
  const m = before.length - keep + 1;
  if (m < 2) {
    if (deleted.length) await syncDir(path.dirname(path.resolve(top)));
    return { before, after: before, deleted, bytesCopied: 0 };
  }
  const merged = before.slice(0, m);
  const target = merged[m - 1]!;
  const above = m < before.length ? before[m]! : path.resolve(top);
  const tmp = `${target}.compact-tmp`;
  let bytesCopied: number;
  try {
    bytesCopied = await buildMerged(merged, tmp, open);
    // The layer above validates its backing by size and this mtime (docs/cow-format.md).
    const mtime = await recordedMtime(above);
    await utimes(tmp, Date.now() / 1000, mtime);
    await syncFile(tmp);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await renameDurably(tmp, target);
  for (const f of merged.slice(0, -1)) if (await unlinkIfExists(f)) deleted.push(f);
  await syncDir(path.dirname(target));
  return { before, after: before.slice(m - 1), merged: target, deleted, bytesCopied };
}

/** Steps 1-2: TMP = L1, then every sector L2..Lm hold, as Lm's chain reads it. */
async function buildMerged(layers: string[], tmp: string, open: OpenLayer): Promise<number> {
  await sparseCopy(layers[0]!, tmp);
  const out = await open(tmp, true);
  let copied = 0;
  try {
    const view = await open(layers[layers.length - 1]!, false);
    try {
      const buf = Buffer.allocUnsafe(CHUNK);
      for (const file of layers.slice(1)) {
        const layer = file === layers[layers.length - 1] ? view : await open(file, false);
        try {
          for (const [start, end] of [...topLayer(layer).runs()]) {
            for (let pos = start; pos < end; pos += CHUNK) {
              const n = Math.min(CHUNK, end - pos);
              await view.read(pos, buf.subarray(0, n));
              await out.write(pos, buf.subarray(0, n));
              copied += n;
            }
          }
        } finally {
          if (layer !== view) await layer.close();
        }
      }
    } finally {
      await view.close();
    }
    // Data before bitmap, both on disk before the rename makes them part of the chain.
    await out.flush();
  } finally {
    await out.close();
  }
  return copied;
}

/**
 * Copy `from` to `to` leaving zero blocks as holes: a cow file is mostly holes (unwritten
 * sectors, its bitmap over an empty range), and a plain copy (copy_file_range) fills them,
 * so compacting a 100 GiB disk would write 100 GiB. Durability: the caller fsyncs `to`.
 */
async function sparseCopy(from: string, to: string): Promise<void> {
  const src = await openFile(from, 'r');
  try {
    const dst = await openFile(to, 'w', 0o600);
    try {
      const { size } = await src.stat();
      const buf = Buffer.allocUnsafe(CHUNK);
      for (let pos = 0; pos < size; pos += CHUNK) {
        const n = Math.min(CHUNK, size - pos);
        const chunk = buf.subarray(0, n);
        const { bytesRead } = await src.read(chunk, 0, n, pos);
        if (bytesRead !== n) throw new Error(`${from}: short read at ${pos} (${bytesRead} of ${n} bytes)`);
        for (let b = 0; b < n; b += ZERO_BLOCK) {
          const block = chunk.subarray(b, Math.min(b + ZERO_BLOCK, n));
          if (!isZero(block)) await dst.write(block, 0, block.length, pos + b);
        }
      }
      await dst.truncate(size);
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

const ZERO_BLOCK = 4096;

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

async function renameDurably(from: string, to: string): Promise<void> {
  await rename(from, to);
  await syncDir(path.dirname(to));
}

async function unlinkIfExists(file: string): Promise<boolean> {
  try {
    await unlink(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
