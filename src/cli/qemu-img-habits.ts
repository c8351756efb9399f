/**
 * Options the image tool accepts because qemu-img users type them (shared by the commands
 * in image-commands.ts, so each command only says which ones apply):
 *
 *   --output=json        qemu-img's spelling of --json (--output=human is the default)
 *   -p, --progress       draw the progress bar even when stderr is not a terminal
 *   -q, --quiet          never draw it (each long command already has -q)
 *   -U, --force-share    qemu-img: open without taking locks. cownbd's read-only opens take
 *                        no locks, so it is accepted and changes nothing where it applies
 *                        (info, map, check without repair, convert/commit -o sources)
 */
import { Option } from 'commander';
import type { ProgressMode } from '../tools/progress.js';

export const outputOption = (): Option => new Option('--output <format>', 'output format, as qemu-img: human or json (same as --json)').choices(['human', 'json']);

export const progressOption = (): Option => new Option('-p, --progress', 'show the progress bar even when stderr is not a terminal (as qemu-img -p)');

export const forceShareOption = (): Option =>
  new Option('-U, --force-share', 'accepted for qemu-img users: read-only opens take no locks in cownbd, so this changes nothing');

export interface HabitFlags {
  json?: boolean;
  output?: 'human' | 'json';
  quiet?: boolean;
  progress?: boolean;
}

/** --json or --output=json. */
export function wantsJson(flags: HabitFlags): boolean {
  return Boolean(flags.json || flags.output === 'json');
}

/** -q and JSON silence the bar; -p forces it; otherwise it follows the terminal. */
export function progressMode(flags: HabitFlags): ProgressMode {
  if (flags.quiet || wantsJson(flags)) return 'off';
  return flags.progress ? 'force' : 'auto';
}
