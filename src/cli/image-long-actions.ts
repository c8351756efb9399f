/**
 * The work of the long-running image subcommands (commit, convert, rebase), registered in
 * image-long-commands.ts and imported when one of them runs: SIGINT handling (a safe state
 * is kept; exit 130), the progress bar, and a one-line summary or --json result.
 */
import type { FileIo } from '../block/file-io.js';
import { runCommit, type OutputSize, type ToolContext } from '../tools/commit.js';
import { journalPath } from '../tools/commit-journal.js';
import { runConvert } from '../tools/convert.js';
import { EXIT_INTERRUPTED, InterruptedError } from '../tools/errors.js';
import { Interrupt } from '../tools/interrupt.js';
import { makeProgress } from '../tools/progress.js';
import { runRebase } from '../tools/rebase.js';
import { formatSize, parseSize } from '../util/size.js';
import { lazyObjectStore, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import { printJson, type CommonFlags } from './image-options.js';
import { progressMode, wantsJson } from './qemu-img-habits.js';

export type CommitFlags = CommonFlags & { to?: string; output?: string; outputSize?: OutputSize; umlMoo?: boolean; updateHeader?: boolean; force?: boolean };
export type ConvertFlags = CommonFlags &
  ObjectStoreFlags & { outputFormat: string; sourceBackingFormat?: string; backing?: string; b?: string; image?: string; clusterSize?: string; force?: boolean };
export type RebaseFlags = CommonFlags & ObjectStoreFlags & { backing: string; unsafe?: boolean; force?: boolean };

/** Run a long operation with SIGINT handling and an optional progress bar. */
async function longRun<T>(flags: CommonFlags, state: () => string, fn: (ctx: ToolContext) => Promise<T>, print: (r: T) => void): Promise<void> {
  try {
    const r = await Interrupt.run(state, (interrupt) =>
      fn({ interrupt, makeProgress: (label, total) => makeProgress(label, total, progressMode(flags)), notify: (line) => process.stderr.write(`${line}\n`) }),
    );
    print(r);
  } catch (err) {
    if (err instanceof InterruptedError) {
      process.stderr.write(`cownbd: ${err.message}\n`);
      process.exitCode = EXIT_INTERRUPTED;
      return;
    }
    throw err;
  }
}

export async function commitAction(file: string, flags: CommitFlags, io: FileIo): Promise<void> {
  const outputSize: OutputSize | undefined = flags.umlMoo ? 'uml-moo' : flags.outputSize;
  const state = (): string =>
    flags.to
      ? `the view through ${file} is unchanged; ${flags.to} is partially updated and ${journalPath(file)} records it: run the same commit again to finish`
      : `${flags.output} was not created`;
  await longRun(
    flags,
    state,
    (ctx) => runCommit(file, { ...flags, outputSize, io }, ctx),
    (r) => {
      if (flags.json) printJson(r);
      else if (!flags.quiet) {
        process.stdout.write(
          `${r.resumed ? 'Resumed and completed' : 'Committed'} ${file} ${r.mode === 'in-place' ? 'into' : 'to'} ${r.target}: ${formatSize(r.bytesWritten)} written${r.headerUpdated ? ' (overlay header mtime updated)' : ''}\n`,
        );
      }
    },
  );
}

export async function convertAction(src: string, dst: string, flags: ConvertFlags, io: FileIo): Promise<void> {
  if (flags.b !== undefined && flags.backing !== undefined && flags.b !== flags.backing) throw new Error('give the new backing file once (-B or -b)');
  const objectStore = lazyObjectStore(flags);
  const options = {
    format: flags.format,
    backingFormat: flags.sourceBackingFormat,
    layout: flags.layout,
    ignoreMtime: flags.ignoreMtime,
    io,
    objectStore,
    outputFormat: flags.outputFormat,
    outBacking: flags.backing ?? flags.b,
    outBackingFormat: flags.backingFormat,
    image: flags.image,
    clusterSize: flags.clusterSize ? parseSize(flags.clusterSize, 'cluster size') : undefined,
    force: flags.force,
  };
  await longRun(
    flags,
    () => `the partial output ${dst} was removed`,
    (ctx) => runConvert(src, dst, options, ctx),
    (r) => {
      if (wantsJson(flags)) printJson(r);
      else if (!flags.quiet) process.stdout.write(`Converted ${src} to ${r.outputFormat} ${dst}: ${formatSize(r.bytesWritten)} written\n`);
    },
  ).finally(() => objectStore.close());
}

export async function rebaseAction(file: string, flags: RebaseFlags, io: FileIo): Promise<void> {
  const objectStore = lazyObjectStore(flags);
  await longRun(
    flags,
    () => `${file} still names its old backing file; data copied so far is flushed and harmless`,
    (ctx) =>
      runRebase(
        file,
        { format: flags.format, layout: flags.layout, ignoreMtime: flags.ignoreMtime, io, objectStore, newBacking: flags.backing, newBackingFormat: flags.backingFormat, unsafe: flags.unsafe, force: flags.force },
        ctx,
      ),
    (r) => {
      if (wantsJson(flags)) printJson(r);
      else if (!flags.quiet) process.stdout.write(`Rebased ${file} onto ${r.storedBacking}${r.unsafe ? ' (unsafe: header only)' : `: ${formatSize(r.bytesCopied)} copied into the overlay`}\n`);
    },
  ).finally(() => objectStore.close());
}
