/**
 * `cownbd demo` (what `npm start` runs): its options. Registration only; demo.ts (the demo
 * disk and the server) is imported when the command runs.
 */
import type { Command } from 'commander';
import type { FileIo } from '../block/file-io.js';
import type { DemoOptions } from './demo.js';
import { DEFAULT_BIND, DEFAULT_PORT, parsePort } from './serve-options.js';
import { addProcessOptions } from './serve-process.js';

export function registerDemoCommand(program: Command, io: FileIo): void {
  const demo = program
    .command('demo')
    .description('serve a demo disk (a cow overlay over a 64 MiB raw base) on 127.0.0.1:10809')
    .option('-p, --port <port>', 'TCP port (0 = pick a free port)', parsePort, DEFAULT_PORT)
    .option('-b, --bind <addr>', 'address to listen on', DEFAULT_BIND)
    .option('--reset', 'throw the demo overlay away (every write so far) and start from the base');
  addProcessOptions(demo, false);
  demo.action(async (o: DemoOptions) => {
    const { runDemo } = await import('./demo.js');
    await runDemo(o, io);
  });
}
