#!/usr/bin/env node
/**
 * cownbd command line: parses argv with the program program.ts builds (serve, demo, the
 * image tools, ctl, the object-store commands). Kept thin: parsing and wiring only.
 *
 * Start-up cost: the modules imported here register options and help text only. Every
 * action imports its implementation when it runs (`await import(...)`), so `--version`,
 * `--help` and `info`/`map`/`check` of a local image never load the server, the admin API
 * (fastify, prom-client), the config file's TOML parser and zod schema, the object store
 * or the progress bar. test/cli/startup.test.ts checks this.
 */
// First: refuse a Node older than `engines` before the rest loads (node-version.ts).
import './node-version.js';
import { FileIo } from '../block/file-io.js';
import { ioPolicyFromEnv } from '../block/io-policy.js';
import { buildProgram } from './program.js';

// `ps`, `pgrep cownbd`, `ss -p` and `top` show "cownbd" rather than "node".
process.title = 'cownbd';

// The one place the I/O switches are read (io-policy.ts); everything below gets the object.
const program = buildProgram(new FileIo(ioPolicyFromEnv(process.env)));

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

