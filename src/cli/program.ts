/**
 * The commander program: every command, option and help text, built without parsing or
 * running anything. main.ts parses argv with it; scripts/build-man.mjs renders the same
 * object to the man page (man-page.ts), so `--help` and `man cownbd` cannot disagree.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import type { FileIo } from '../block/file-io.js';
import { registerImageCommands } from './image-commands.js';
import { registerServeCommand } from './serve-register.js';
import { registerDemoCommand } from './demo-register.js';
import { checkToolPaths } from './image-path.js';
import { registerCtlCommand } from './ctl-command.js';
import { registerObjectStoreCommands } from './objectstore-commands.js';
import { addConfigDefaults } from './program-config.js';

export const PROGRAM_DESCRIPTION = 'NBD server for copy-on-write disk images (User-Mode-Linux cow and add-cow overlays)';

export function buildProgram(io: FileIo): Command {
  const program = new Command();
  program.name('cownbd').description(PROGRAM_DESCRIPTION).version(packageVersion());
  registerServeCommand(program, io);
  registerDemoCommand(program, io);
  registerImageCommands(program, io);
  // File arguments are checked (stat, never open) before a command runs: a FIFO must not hang
  // us, a missing file gets qemu-img's words (image-path.ts).
  program.hook('preAction', (_program, action) => checkToolPaths(action.name(), action.processedArgs));
  registerCtlCommand(program);
  registerObjectStoreCommands(program);
  // Last: it adds --config to every command registered above that reads s3:// images.
  addConfigDefaults(program);
  return program;
}

/** The version in package.json (dist/cli/program.js → ../../package.json): one source of truth. */
export function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}
