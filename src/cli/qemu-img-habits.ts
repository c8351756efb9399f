/**
 * Options the image tool accepts because qemu-img users type them (shared by the commands
 * in image-commands.ts, so each command only says which ones apply):
 *
 *   --output=json        info, map, check: the document qemu-img prints (its keys and shapes,
 *                        src/tools/qemu-json.ts, qemu-map.ts), so qemu-img's jq recipes work;
 *                        --json keeps cownbd's richer documents (and wins if both are given).
 *                        The other commands have no qemu-img JSON: there it is --json.
 *                        (--output=human is the default.)
 *   -p, --progress       draw the progress bar even when stderr is not a terminal
 *   -q, --quiet          never draw it (each long command already has -q)
 *   -U, --force-share    qemu-img: open without taking locks. cownbd's read-only opens take
 *                        no locks, so it is accepted and changes nothing where it applies
 *                        (info, map, check without repair, convert/commit -o sources)
 */
import { Option } from 'commander';
import type { ProgressMode } from '../tools/progress.js';

export const outputOption = (qemuShapes = false): Option =>
  new Option('--output <format>', qemuShapes ? "output format, as qemu-img: human or json (json: qemu-img's keys and shapes; --json: cownbd's richer document)" : 'output format, as qemu-img: human or json (same as --json)').choices(['human', 'json']);

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

/** --output=json without --json: print what qemu-img prints (info, map, check). */
export function wantsQemuJson(flags: HabitFlags): boolean {
  return flags.output === 'json' && !flags.json;
}

/** qemu-img's layout of a JSON document (4-space indent). */
export function printQemuJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 4)}\n`);
}

/** -q and JSON silence the bar; -p forces it; otherwise it follows the terminal. */
export function progressMode(flags: HabitFlags): ProgressMode {
  if (flags.quiet || wantsJson(flags)) return 'off';
  return flags.progress ? 'force' : 'auto';
}
