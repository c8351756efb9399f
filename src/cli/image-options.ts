/**
 * What the image subcommands share: the option builders (format names come from the
 * format registry, never a list of our own), JSON printing and the long-run wrapper
 * (SIGINT handling and the progress bar).
 */
import { Option } from 'commander';
import { FORMAT_NAMES } from '../formats/registry.js';
import type { ToolContext } from '../tools/commit.js';
import { EXIT_INTERRUPTED, InterruptedError } from '../tools/errors.js';
import { Interrupt } from '../tools/interrupt.js';
import { makeProgress } from '../tools/progress.js';
import { progressMode, type HabitFlags } from './qemu-img-habits.js';

export interface CommonFlags extends HabitFlags {
  format?: string;
  backingFormat?: string;
  layout?: string;
  ignoreMtime?: boolean;
}

export const formatOption = (): Option => new Option('-f, --format <format>', 'format of FILE (default: detected from its magic)').choices([...FORMAT_NAMES]);
export const backingFormatOption = (): Option =>
  new Option('-F, --backing-format <format>', 'format of the backing file (cow default raw; add-cow: as recorded)').choices([...FORMAT_NAMES]);
export const layoutOption = (): Option => new Option('--layout <layout>', 'cow: force a header layout (v1, v2, v3, v3-broken, qemu-i386, qemu-x86_64)');

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Run a long operation with SIGINT handling and an optional progress bar. */
export async function longRun<T>(flags: CommonFlags, state: () => string, fn: (ctx: ToolContext) => Promise<T>, print: (r: T) => void): Promise<void> {
  try {
    const r = await Interrupt.run(state, (interrupt) =>
      fn({ interrupt, makeProgress: (label, total) => makeProgress(label, total, progressMode(flags)) }),
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
