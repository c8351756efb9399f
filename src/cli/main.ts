#!/usr/bin/env node
/**
 * cownbd command line: `serve`, `demo`, and the image tools (registered by
 * image-commands.ts). Kept thin: parsing and wiring only.
 */
import { Command } from 'commander';
import { registerImageCommands } from './image-commands.js';
import { registerServeCommand } from './serve-command.js';
import { registerDemoCommand } from './demo.js';

const program = new Command();
program
  .name('cownbd')
  .description('NBD server for copy-on-write disk images (User-Mode-Linux cow and add-cow overlays)')
  .version('0.1.0');

registerServeCommand(program);
registerDemoCommand(program);
registerImageCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`cownbd: ${(err as Error)?.message ?? String(err)}\n`);
  process.exit(1);
});
