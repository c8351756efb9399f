#!/usr/bin/env node
/**
 * cownbd command line: `serve`, `demo`, and the image tools (registered by
 * image-commands.ts). Kept thin: parsing and wiring only.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { FileIo } from '../block/file-io.js';
import { ioPolicyFromEnv } from '../block/io-policy.js';
import { registerImageCommands } from './image-commands.js';
import { registerServeCommand } from './serve-command.js';
import { registerDemoCommand } from './demo.js';

// `ps`, `pgrep cownbd`, `ss -p` and `top` show "cownbd" rather than "node".
process.title = 'cownbd';

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

// Operator errors (bad option, missing file, cow "mtime mismatch", port in use) end the
// process with ONE line naming the problem and status 1; a stack trace would bury the
// message. COWNBD_DEBUG=1 adds the stack for bug reports.
program.parseAsync(process.argv).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`cownbd: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
  if (process.env.COWNBD_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});

/** The version in package.json (dist/cli/main.js → ../../package.json): one source of truth. */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}
