/**
 * `cownbd commit FILE (--to BACKING | -o OUT)`: merge an overlay with its backing file.
 *
 *   -o OUT      new sparse raw file with the merged view (like `uml_moo COW OUT`);
 *               output length: --output-size backing (default for cow: exactly the
 *               backing file's size, keeping the partial last sector's bytes), virtual
 *               (roundup to 512), uml-moo (floor to 512: byte-identical to uml_moo).
 *   --to BASE   in place (like `uml_moo -d -b BASE COW`): the ONLY command that writes a
 *               backing file, and only when the operator names it. BASE must be the file
 *               the overlay validates against (size, and mtime for UML layouts). Only
 *               sectors/clusters allocated in the overlay are written, and only where
 *               their bytes differ from BASE (uml_moo also skips zero sectors over zeros),
 *               never past BASE's end. Crash safety: see commit-journal.ts. Afterwards the
 *               cow header's mtime is set to BASE's new mtime so the overlay stays usable
 *               (its view is unchanged) when BASE is the file the header names (same
 *               inode; with another path, e.g. a copy, the header is left alone);
 *               --no-update-header leaves it like uml_moo does
 *               (the overlay then fails the mtime check forever).
 */
import path from 'node:path';

import { open, stat } from 'node:fs/promises';
import type { BlockDevice } from '../block/block-device.js';
import { writeFully } from '../block/file-io.js';
import { resolveBackingPath, statBacking } from '../formats/cow/index.js';
import { openImage, probeFormat, type ImageFormat } from '../formats/open-image.js';
import { openChain, type ChainOptions } from './chain.js';
import { readJournal, removeJournal, writeJournal, type CommitJournal } from './commit-journal.js';
import { ToolError } from './errors.js';
import { flattenToRaw } from './flatten.js';
import type { Interrupt } from './interrupt.js';
import { topLayer, type TopLayer } from './layers.js';
import type { ProgressSink } from './progress.js';
import { CHUNK, differingRuns } from './stream.js';

export type OutputSize = 'backing' | 'virtual' | 'uml-moo';

export interface CommitOptions extends ChainOptions {
  to?: string;
  output?: string;
  outputSize?: OutputSize;
  force?: boolean;
  /** In-place cow: refresh the header mtime afterwards (default true). */
  updateHeader?: boolean;
}

export interface CommitJson {
  command: 'commit';
  mode: 'in-place' | 'new-file';
  overlay: string;
  format: string;
  target: string;
  /** Bytes written to the target. */
  bytesWritten: number;
  /** Length of the output file (new-file) or of the target's committed range (in-place). */
  length: number;
  resumed: boolean;
  headerUpdated: boolean;
  elapsedMs: number;
}

export interface ToolContext {
  interrupt: Pick<Interrupt, 'check'>;
  makeProgress(label: string, total: number): ProgressSink;
}

export async function runCommit(file: string, options: CommitOptions, ctx: ToolContext): Promise<CommitJson> {
  const started = Date.now();
  if ((options.to === undefined) === (options.output === undefined)) {
    throw new ToolError('commit needs exactly one of --to BACKING (merge in place into the backing file) or -o OUT (write a new merged image)');
  }
  const format = options.format ?? (await probeFormat(file));
  if (format === 'raw') throw new ToolError(`${file}: a raw image has no backing file (nothing to commit)`);
  const result = options.output !== undefined ? await commitToFile(file, format, options.output, options, ctx) : await commitInPlace(file, format, options.to!, options, ctx);
  return { ...result, elapsedMs: Date.now() - started };
}

async function commitToFile(file: string, format: ImageFormat, out: string, options: CommitOptions, ctx: ToolContext): Promise<Omit<CommitJson, 'elapsedMs'>> {
  const dev = await openChain(file, { ...options, format });
  try {
    const top = topLayer(dev, options.backingFormat);
    const mode = options.outputSize ?? (top.format === 'cow' ? 'backing' : 'virtual');
    let length = dev.size;
    if (top.cow) {
      const size = top.cow.header.size;
      length = mode === 'backing' ? size : mode === 'uml-moo' ? Math.floor(size / 512) * 512 : dev.size;
    } else if (mode === 'uml-moo') {
      throw new ToolError('--output-size uml-moo applies to cow overlays only');
    }
    const r = await flattenToRaw(dev, out, length, { force: options.force, progress: ctx.makeProgress(`commit ${path.basename(file)}`, length), interrupt: ctx.interrupt });
    return { command: 'commit', mode: 'new-file', overlay: file, format: top.format, target: out, bytesWritten: r.bytesWritten, length, resumed: false, headerUpdated: false };
  } finally {
    await dev.close();
  }
}

async function commitInPlace(file: string, format: ImageFormat, to: string, options: CommitOptions, ctx: ToolContext): Promise<Omit<CommitJson, 'elapsedMs'>> {
  const target = path.resolve(to);
  const journal = await readJournal(file);
  if (journal && journal.target !== target) {
    throw new ToolError(`${file}: an interrupted commit into "${journal.target}" must be finished first (commit --to ${journal.target}); got --to ${to}`);
  }
  const resumed = journal !== undefined;
  // Validate like uml_moo -b: the named file must be the one the overlay was made on.
  // On resume the mtime has legitimately moved (we wrote the file): size must still match.
  const dev = await openChain(file, { ...options, format, backingFile: target, ignoreMtime: resumed || options.ignoreMtime });
  let targetDev: BlockDevice | undefined;
  try {
    const top = topLayer(dev, options.backingFormat);
    if (top.backingPath === undefined) {
      throw new ToolError(`${file}: the overlay uses no backing file (ALL_ALLOCATED or none recorded): nothing to commit into`);
    }
    const targetFormat = (top.backingFormat ?? 'raw') as ImageFormat;
    targetDev = await openImage(target, { format: targetFormat, readOnly: false, io: options.io });
    let limit = Math.min(dev.size, targetDev.size);
    if (top.cow && options.outputSize === 'uml-moo') limit = Math.min(limit, Math.floor(top.cow.header.size / 512) * 512);
    if (top.addCow) {
      // An add-cow image may be larger than its backing (docs/add-cow-format.md#a2): never drop allocated data silently.
      let past = 0;
      for (const [s, e] of top.runs()) past += Math.max(0, e - Math.max(s, targetDev.size));
      if (past > 0) {
        throw new ToolError(`${file}: ${past} bytes of allocated clusters lie past the end of the backing file ${target} (${targetDev.size} bytes); commit -o OUT instead`);
      }
    }
    if (!journal) {
      const j: CommitJournal = {
        version: 1,
        tool: 'cownbd commit',
        overlay: path.resolve(file),
        overlayFormat: top.format,
        target,
        targetFormat,
        expectedSize: top.cow ? top.cow.header.size : targetDev.size,
        headerMtime: top.cow ? top.cow.header.mtime : null,
        started: new Date().toISOString(),
      };
      await writeJournal(file, j);
    }
    const bytesWritten = await copyAllocated(dev, targetDev, top, limit, ctx, `commit ${path.basename(file)}`);
    await targetDev.flush();
    await targetDev.close();
    targetDev = undefined;
    let headerUpdated = false;
    if (top.cow && options.updateHeader !== false && (await sameFile(resolveBackingPath(top.cow.layout, top.cow.header.backingFile, file), target))) {
      headerUpdated = await refreshCowMtime(file, top, target);
    }
    await removeJournal(file);
    return { command: 'commit', mode: 'in-place', overlay: file, format: top.format, target, bytesWritten, length: limit, resumed, headerUpdated };
  } catch (err) {
    // Interrupted or failed mid-copy: make what was written durable; the journal stays.
    if (targetDev) await targetDev.flush().catch(() => {});
    throw err;
  } finally {
    await targetDev?.close().catch(() => {});
    await dev.close();
  }
}

/** Copy the top layer's allocated ranges below `limit` into `target` where they differ. */
async function copyAllocated(dev: BlockDevice, target: BlockDevice, top: TopLayer, limit: number, ctx: ToolContext, label: string): Promise<number> {
  const progress = ctx.makeProgress(label, top.allocatedBytes());
  const ours = Buffer.allocUnsafe(CHUNK);
  const theirs = Buffer.allocUnsafe(CHUNK);
  let done = 0;
  let written = 0;
  try {
    for (const [start, end] of top.runs()) {
      for (let pos = start; pos < Math.min(end, limit); pos += CHUNK) {
        ctx.interrupt.check();
        const n = Math.min(CHUNK, Math.min(end, limit) - pos);
        const a = ours.subarray(0, n);
        const b = theirs.subarray(0, n);
        await Promise.all([dev.read(pos, a), target.read(pos, b)]);
        for (const [s, e] of differingRuns(a, b, 512)) {
          await target.write(pos + s, a.subarray(s, e));
          written += e - s;
        }
        done += n;
        progress.update(done);
      }
    }
  } finally {
    progress.finish();
  }
  return written;
}

/** Field offset and byte order of the mtime per cow layout (QEMU layouts: never checked). */
const MTIME_FIELD: Record<string, { offset: number; le: boolean } | undefined> = {
  v1: { offset: 264, le: true },
  v2: { offset: 4104, le: false },
  v3: { offset: 8, le: false },
  'v3-broken': { offset: 8, le: false },
};

/** Rewrite only the header's 4-byte mtime (one aligned sector write) to the backing's new mtime. */
async function refreshCowMtime(file: string, top: TopLayer, target: string): Promise<boolean> {
  const field = MTIME_FIELD[top.cow!.header.layout];
  if (!field) return false;
  const st = await statBacking(target);
  if (st.mtime < 0 || st.mtime >= 2 ** 32) {
    process.stderr.write(`cownbd: warning: ${target} mtime ${st.mtime} does not fit the cow header; header not updated\n`);
    return false;
  }
  if (st.mtime === top.cow!.header.mtime) return false;
  const buf = Buffer.alloc(4);
  if (field.le) buf.writeUInt32LE(st.mtime);
  else buf.writeUInt32BE(st.mtime);
  const fh = await open(file, 'r+');
  try {
    await writeFully(fh, field.offset, buf);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return true;
}


/** Do both paths name the same file (dev + inode)? The header is only refreshed for its own backing. */
async function sameFile(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return sa !== undefined && sb !== undefined && sa.dev === sb.dev && sa.ino === sb.ino;
}
