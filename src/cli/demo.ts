/**
 * `cownbd demo` (what `npm start` runs): a small demo disk in the user cache dir, served
 * as a copy-on-write overlay on 127.0.0.1:10809 with ready-to-paste client commands.
 *
 *   $XDG_CACHE_HOME/cownbd/demo/demo-base.raw     64 MiB sparse raw base: a text banner at
 *                                                 offset 0, a patterned 64 KiB block at 1 MiB,
 *                                                 a 1 MiB block at 8 MiB, holes elsewhere.
 *                                                 Never written by the server.
 *   $XDG_CACHE_HOME/cownbd/demo/demo-overlay.cow  UML v3 cow over the base; every client
 *                                                 write lands here (and persists across
 *                                                 runs). `demo --reset` throws it away.
 *
 * `nbdinfo --map=qemu:allocation-depth` then shows depth 1 where a client wrote (overlay)
 * and 2 where the base shows through. An overlay that no longer validates (the base was
 * re-created, so its mtime changed) is replaced by a fresh one, with a warning.
 */
import { mkdir, open, stat, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import type { FileIo } from '../block/file-io.js';
import { createCow } from '../formats/cow/index.js';
import { openImage } from '../formats/open-image.js';
import { createLogger, type Logger } from '../logging.js';
import { StaticExportProvider } from '../server/exports.js';
import { listenEndpoints, logNativeAddon, nbdServerOf, runServer } from './serve-command.js';
import { applyProcessOptions, type ProcessOptions } from './serve-process.js';

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

/** Path of the demo overlay next to the demo base. */
export function demoOverlayPath(dir = demoCacheDir()): string {
  return path.join(dir, 'demo-overlay.cow');
}

/**
 * Open the demo overlay over `base`, creating it when missing, when `reset` asks for a
 * fresh one, or when the existing one no longer validates against the base.
 */
export async function openDemoOverlay(base: string, options: { reset?: boolean; log?: Logger; io?: FileIo } = {}): Promise<{ file: string; device: BlockDevice; created: boolean }> {
  const file = demoOverlayPath(path.dirname(base));
  if (options.reset) await unlink(file).catch(() => {});
  let created = false;
  if (!(await exists(file))) {
    await createCow(file, { backingFile: base });
    created = true;
  }
  try {
    return { file, device: await openImage(file, { format: 'cow', io: options.io }), created };
  } catch (err) {
    if (created) throw err;
    // Stale overlay (e.g. the base was re-created: size or mtime mismatch): start over.
    options.log?.warn({ file, reason: (err as Error).message }, 'demo overlay does not match the base any more; creating a new one');
    await createCow(file, { backingFile: base, force: true });
    return { file, device: await openImage(file, { format: 'cow', io: options.io }), created: true };
  }
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

function demoPattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) b.writeUInt32BE((i * 2654435761 + seed) >>> 0, i);
  return b;
}

/**
 * How to restart the demo from scratch, in words that work where the user is: under
 * `npm start` the `cownbd` command is not on PATH (npm install does not link the
 * package's own bin), so say `npm start -- --reset` there.
 */
export function resetCommand(env: NodeJS.ProcessEnv): string {
  return env.npm_lifecycle_event === 'start' ? 'npm start -- --reset' : 'cownbd demo --reset';
}

/** What `demo` is given (options registered in demo-register.ts). */
export type DemoOptions = { port: number; bind: string; reset?: boolean } & ProcessOptions;

/** `cownbd demo`: set up the demo disk, serve it, print the client commands to try. */
export async function runDemo(o: DemoOptions, io: FileIo): Promise<void> {
  const log = createLogger({ level: o.logLevel });
  logNativeAddon(log, io.policy);
  const base = await setupDemoImage();
  const overlay = await openDemoOverlay(base, { reset: o.reset, log, io });
  const provider = new StaticExportProvider(
    [{ name: '', path: overlay.file, format: 'cow', description: 'cownbd demo disk (cow overlay)' }],
    log,
    () => Promise.resolve(overlay.device),
  );
  const running = await runServer(nbdServerOf(provider, listenEndpoints(o, []), io, '', log), o, log);
  await applyProcessOptions({ ...running, defaultExport: '' }, o, log, process.env);
  if (o.printUri) return;
  const uri = running.uris[0]!.replace(/\/$/, '');
  process.stdout.write(
    [
      `cownbd demo: serving ${overlay.file} (${overlay.created ? 'new' : 'existing'} cow overlay, ${DEMO_SIZE / 1024 / 1024} MiB)`,
      `  over the read-only base ${base}`,
      `  at ${uri}`,
      'try:',
      `  nbdinfo ${uri}`,
      `  nbdinfo --map=qemu:allocation-depth ${uri}`,
      `  qemu-img info ${uri}`,
      `  qemu-io -f raw -c 'write -P 0x55 0 64k' ${uri}`,
      `  nbdinfo --map=qemu:allocation-depth ${uri}    # depth 1 = written to the overlay, 2 = base`,
      `writes persist in the overlay; \`${resetCommand(process.env)}\` discards them`,
      'press Ctrl-C to stop',
      '',
    ].join('\n'),
  );
}
