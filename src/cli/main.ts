#!/usr/bin/env node
/**
 * cownbd command line: `serve`, `demo`, and the image tools (registered by
 * image-commands.ts). Kept thin: parsing and wiring only.
 *
 * Start-up cost: the modules imported here register options and help text only. Every
 * action imports its implementation when it runs (`await import(...)`), so `--version`,
 * `--help` and `info`/`map`/`check` of a local image never load the server, the admin API
 * (fastify, prom-client), the config file's TOML parser and zod schema, the object store
 * or the progress bar. test/cli/startup.test.ts checks this.
 */
// First: refuse a Node older than `engines` before the rest loads (node-version.ts).
import './node-version.js';
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { FileIo } from '../block/file-io.js';
import { ioPolicyFromEnv } from '../block/io-policy.js';
import { registerImageCommands } from './image-commands.js';
import { registerServeCommand } from './serve-register.js';
import { registerDemoCommand } from './demo-register.js';
import { checkToolPaths } from './image-path.js';
import { registerCtlCommand } from './ctl-command.js';

// `ps`, `pgrep cownbd`, `ss -p` and `top` show "cownbd" rather than "node".
process.title = 'cownbd';
import { registerObjectStoreCommands } from './objectstore-commands.js';

const program = new Command();
program
  .name('cownbd')
  .description('NBD server for copy-on-write disk images (User-Mode-Linux cow and add-cow overlays)')
  .version(packageVersion());

// The one place the I/O switches are read (io-policy.ts); everything below gets the object.
const io = new FileIo(ioPolicyFromEnv(process.env));
registerServeCommand(program, io);
registerDemoCommand(program, io);
registerImageCommands(program, io);
// File arguments are checked (stat, never open) before a command runs: a FIFO must not hang
// us, a missing file gets qemu-img's words (image-path.ts).
program.hook('preAction', (_program, action) => checkToolPaths(action.name(), action.processedArgs));
registerCtlCommand(program);
registerObjectStoreCommands(program);

// Operator errors (bad option, missing file, cow "mtime mismatch", port in use) end the
// process with ONE line naming the problem and status 1; a stack trace would bury the
// message. COWNBD_DEBUG=1 adds the stack for bug reports.
program.parseAsync(process.argv).catch((err: unknown) => {
  const message = operatorMessage(err);
  process.stderr.write(`cownbd: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
  if (process.env.COWNBD_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});

/** The error as the operator should read it: Node's raw ENOENT text in qemu-img's words. */
function operatorMessage(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOENT' && e.path && e.message.startsWith('ENOENT:')) return `Could not open '${e.path}': No such file or directory`;
  return err.message;
}

/** The version in package.json (dist/cli/main.js → ../../package.json): one source of truth. */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}
