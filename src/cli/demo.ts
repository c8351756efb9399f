/**
 * `cownbd demo` (what `npm start` runs): create a small demo disk in the user cache dir
 * and serve it on 127.0.0.1:10809, printing ready-to-paste client commands.
 *
 * The demo image: 64 MiB sparse raw file with a text banner at offset 0, a patterned
 * 64 KiB block at 1 MiB and a 1 MiB block at 8 MiB; the rest is holes — so
 * `nbdinfo --map` shows a mix of data and hole extents.
 * setupDemoImage() is separate so the demo can later become a cow overlay on top.
 */
import { mkdir, open, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { createLogger } from '../logging.js';
import { StaticExportProvider } from '../server/exports.js';
import { DEFAULT_BIND, DEFAULT_PORT, parsePort, runServer } from './serve-command.js';

export const DEMO_SIZE = 64 * 1024 * 1024;
export const DEMO_BANNER = 'cownbd demo disk: served over NBD by cownbd\n';

export function demoCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'cownbd', 'demo');
}

/** Create (once) and return the path of the demo base image. */
export async function setupDemoImage(dir = demoCacheDir()): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, 'demo-base.raw');
  try {
    const st = await stat(file);
    if (st.size === DEMO_SIZE) return file;
  } catch {
    // Not there yet.
  }
  const fh = await open(file, 'w');
  try {
    await fh.truncate(DEMO_SIZE);
    await fh.write(Buffer.from(DEMO_BANNER), 0, DEMO_BANNER.length, 0);
    await fh.write(demoPattern(64 * 1024, 1), 0, 64 * 1024, 1024 * 1024);
    await fh.write(demoPattern(1024 * 1024, 2), 0, 1024 * 1024, 8 * 1024 * 1024);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return file;
}

function demoPattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) b.writeUInt32BE((i * 2654435761 + seed) >>> 0, i);
  return b;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('create a demo disk and serve it on 127.0.0.1:10809')
    .option('-p, --port <port>', 'TCP port', parsePort, DEFAULT_PORT)
    .option('--log-level <level>', 'log level', 'info')
    .action(async (o: { port: number; logLevel: string }) => {
      const log = createLogger({ level: o.logLevel });
      const image = await setupDemoImage();
      const provider = new StaticExportProvider([{ name: '', path: image, description: 'cownbd demo disk' }], log);
      const { uris } = await runServer(provider, { port: o.port, bind: DEFAULT_BIND }, '', log);
      const uri = uris[0]!;
      const base = uri.replace(/\/$/, '');
      process.stdout.write(
        [
          `cownbd demo: serving ${image} (${DEMO_SIZE / 1024 / 1024} MiB) at ${uri}`,
          'try:',
          `  nbdinfo ${base}`,
          `  nbdinfo --map ${base}`,
          `  qemu-img info ${base}`,
          `  nbdsh -u ${base} -c 'print(h.pread(64, 0))'`,
          'press Ctrl-C to stop',
          '',
        ].join('\n'),
      );
    });
}
