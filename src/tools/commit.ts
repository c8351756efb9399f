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
import type { BlockDevice } from '../block/block-device.js';
import type { OutputSize } from '../formats/format-record.js';
import { openImage, recordFor, type ImageFormat } from '../formats/open-image.js';
import { FALLBACK_FORMAT, namedBackingFormat } from '../formats/registry.js';
import { openChain, type ChainOptions } from './chain.js';
import { readJournal, removeJournal, writeJournal, type CommitJournal } from './commit-journal.js';
import { ToolError } from './errors.js';
import { flattenToRaw } from './flatten.js';
import type { Interrupt } from './interrupt.js';
import { topLayer, type TopLayer } from './layers.js';
import type { ProgressSink } from './progress.js';
import { CHUNK, differingRuns } from './stream.js';

export type { OutputSize } from '../formats/format-record.js';

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
  /** A line for the operator (a warning, a note); the CLI writes it to stderr. Default: dropped. */
  notify?(line: string): void;
}

export async function runCommit(file: string, options: CommitOptions, ctx: ToolContext): Promise<CommitJson> {
  const started = Date.now();
  if ((options.to === undefined) === (options.output === undefined)) {
    throw new ToolError('commit needs exactly one of --to BACKING (merge in place into the backing file) or -o OUT (write a new merged image)');
  }
  const record = await recordFor(file, options.format);
  if (!record.layer) throw new ToolError(`${file}: a ${record.name} image has no backing file (nothing to commit)`);
  const format = record.name;
  const result = options.output !== undefined ? await commitToFile(file, format, options.output, options, ctx) : await commitInPlace(file, format, options.to!, options, ctx);
  return { ...result, elapsedMs: Date.now() - started };
}

async function commitToFile(file: string, format: ImageFormat, out: string, options: CommitOptions, ctx: ToolContext): Promise<Omit<CommitJson, 'elapsedMs'>> {
  const dev = await openChain(file, { ...options, format });
  try {
    const top = topLayer(dev);
    const length = top.outputLength(options.outputSize, dev.size);
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
  // The target is written: a foreign image (qcow2, vmdk, ...) named without -F is refused
  // (registry.ts). A resumed commit already wrote into it, with the operator's consent.
  if (!resumed && options.backingFormat === undefined) await namedBackingFormat(to, undefined, '-F raw (--backing-format raw)');
  // Validate like uml_moo -b: the named file must be the one the overlay was made on.
  // On resume the mtime has legitimately moved (we wrote the file): size must still match.
  const dev = await openChain(file, { ...options, format, backingFile: target, ignoreMtime: resumed || options.ignoreMtime });
  let targetDev: BlockDevice | undefined;
  try {
    const top = topLayer(dev);
    if (top.backingPath === undefined) {
      throw new ToolError(`${file}: the overlay uses no backing file (ALL_ALLOCATED or none recorded): nothing to commit into`);
    }
    const targetFormat = top.backingFormat ?? FALLBACK_FORMAT.name;
    targetDev = await openImage(target, { format: targetFormat, readOnly: false, io: options.io });
    const limit = top.commitLimit(Math.min(dev.size, targetDev.size), options.outputSize);
    top.checkCommitFits(targetDev.size, file, target);
    if (!journal) {
      const j: CommitJournal = {
        version: 1,
        tool: 'cownbd commit',
        overlay: path.resolve(file),
        overlayFormat: top.format,
        target,
        targetFormat,
        ...top.journalFacts(targetDev.size),
        started: new Date().toISOString(),
      };
      await writeJournal(file, j);
    }
    const bytesWritten = await copyAllocated(dev, targetDev, top, limit, ctx, `commit ${path.basename(file)}`);
    await targetDev.flush();
    await targetDev.close();
    targetDev = undefined;
    const headerUpdated = await top.afterCommit(file, target, options.updateHeader !== false, (line) => ctx.notify?.(line));
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
