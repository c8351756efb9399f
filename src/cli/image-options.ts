/**
 * What the image subcommands share when they are registered: the option builders (format
 * names come from the format registry, never a list of our own), the flag types and JSON
 * printing. The long-run wrapper (SIGINT handling, progress bar) is in
 * image-long-actions.ts, loaded only when a long command runs.
 */
import { Option } from 'commander';
import { FORMAT_NAMES } from '../formats/registry.js';
import type { HabitFlags } from './qemu-img-habits.js';

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
