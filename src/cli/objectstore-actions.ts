/**
 * The work of the object-store subcommands (registered in objectstore-commands.ts, loaded
 * when one runs): `publish` with its progress bar, `cache show|clear`. Parsing checks and
 * printing only; the work itself is in src/objectstore/.
 */
import path from 'node:path';
import { InvalidArgumentError } from 'commander';
import cliProgress from 'cli-progress';
import { openImage, type ImageFormat } from '../formats/open-image.js';
import { createLogger } from '../logging.js';
import { readCacheBound } from '../objectstore/cache-bound.js';
import { clearCacheDir, inspectCacheDir } from '../objectstore/chunk-cache.js';
import { cacheConfigFrom, lazyObjectStore, storeConfigFrom, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import { MAX_CHUNK_SIZE, MIN_CHUNK_SIZE } from '../objectstore/manifest.js';
import { publishImage } from '../objectstore/publish.js';
import { StoreClient } from '../objectstore/store-client.js';
import { parseObjectStoreUri } from '../objectstore/uri.js';
import { formatSize, parseSize } from '../util/size.js';

export interface PublishFlags extends ObjectStoreFlags {
  format?: ImageFormat;
  backingFormat?: ImageFormat;
  chunkSize: string;
  chunkPrefix: string;
  parallel: number;
  verify?: boolean;
  quiet?: boolean;
  json?: boolean;
}

function chunkSizeOf(text: string): number {
  const n = parseSize(text, '--chunk-size');
  if ((n & (n - 1)) !== 0 || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE) throw new InvalidArgumentError(`--chunk-size must be a power of two from 64K to 64M (got "${text}")`);
  return n;
}

export async function publishAction(image: string, target: string, flags: PublishFlags): Promise<void> {
  parseObjectStoreUri(target);
  const chunkSize = chunkSizeOf(flags.chunkSize);
  if (!/^(?:[A-Za-z0-9._-]+\/)*$/.test(flags.chunkPrefix) || flags.chunkPrefix.split('/').some((seg) => seg === '.' || seg === '..')) {
    throw new Error(`--chunk-prefix must be key segments ending with "/", without "." or ".." (got "${flags.chunkPrefix}")`);
  }
  if (!Number.isInteger(flags.parallel) || flags.parallel < 1 || flags.parallel > 256) throw new Error(`--parallel must be 1-256 (got "${flags.parallel}")`);
  const log = createLogger({ level: 'warn' });
  const objectStore = lazyObjectStore(flags, log);
  const client = new StoreClient(storeConfigFrom(flags), log);
  const device = await openImage(image, { readOnly: true, format: flags.format, backingFormat: flags.backingFormat, objectStore });
  const bar = flags.quiet || flags.json || !process.stderr.isTTY ? undefined : new cliProgress.SingleBar(
    { format: 'publish [{bar}] {percentage}% {done}/{size} {rate}/s', hideCursor: true, stream: process.stderr },
    cliProgress.Presets.shades_classic,
  );
  const started = Date.now();
  const fmt = (done: number) => ({ done: formatSize(done), size: formatSize(device.size), rate: formatSize(Math.round(done / Math.max(0.001, (Date.now() - started) / 1000))) });
  bar?.start(device.size, 0, fmt(0));
  try {
    const r = await publishImage(device, target, client, {
      chunkSize,
      chunkPrefix: flags.chunkPrefix,
      concurrency: flags.parallel,
      verify: flags.verify === true,
      source: path.basename(image),
      onProgress: (done) => bar?.update(done, fmt(done)),
    });
    bar?.stop();
    if (flags.json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    else {
      process.stdout.write(
        `published ${r.uri}\n` +
          `  ${r.chunks} chunks of ${formatSize(r.chunkSize)}: ${r.uploadedChunks} uploaded (${formatSize(r.uploadedBytes)}), ` +
          `${r.presentChunks} already there, ${r.repairedChunks} damaged and uploaded again, ${r.zeroChunks} zero (not stored); ${r.seconds.toFixed(1)} s, ` +
          `${formatSize(Math.round(r.virtualSize / Math.max(0.001, r.seconds)))}/s\n`,
      );
    }
  } finally {
    bar?.stop();
    await device.close();
    client.close();
    await objectStore.close();
  }
}

export interface FsckFlags extends ObjectStoreFlags {
  quick?: boolean;
  parallel: number;
  json?: boolean;
}

export async function fsckAction(image: string, flags: FsckFlags): Promise<void> {
  parseObjectStoreUri(image);
  if (!Number.isInteger(flags.parallel) || flags.parallel < 1 || flags.parallel > 256) throw new Error(`--parallel must be 1-256 (got "${flags.parallel}")`);
  const { runFsck } = await import('../objectstore/fsck.js');
  const client = new StoreClient(storeConfigFrom(flags), createLogger({ level: 'warn' }));
  try {
    const r = await runFsck(image, client, { quick: flags.quick, parallel: flags.parallel });
    if (flags.json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    else {
      const lines = r.problems.map((p) => `${p.problem}: ${p.what}: ${p.detail} (versions ${p.versions.join(', ')})`);
      if (r.error) lines.push(`could not check: ${r.error}`);
      lines.push(`${r.image}: ${r.versions.length} version(s), ${r.chunks} distinct chunks, ${r.problems.length} problem(s): ${r.result}`);
      (r.result === 'clean' ? process.stdout : process.stderr).write(`${lines.join('\n')}\n`);
    }
    process.exitCode = r.result === 'clean' ? 0 : r.result === 'corrupt' ? 2 : 1;
  } finally {
    client.close();
  }
}

export interface GcFlags extends ObjectStoreFlags {
  grace: string;
  delete?: boolean;
  json?: boolean;
}

const DURATION = /^(\d+)(s|m|h|d)$/;

export async function gcAction(bucketUri: string, flags: GcFlags): Promise<void> {
  const b = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\/?$/.exec(bucketUri);
  if (!b) throw new Error(`gc takes a bucket address s3://BUCKET (got "${bucketUri}")`);
  const d = DURATION.exec(flags.grace);
  if (!d) throw new Error(`--grace must be a duration such as 30m, 24h or 7d (got "${flags.grace}")`);
  const graceMs = Number(d[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[d[2] as 's' | 'm' | 'h' | 'd'];
  const { runGc } = await import('../objectstore/gc.js');
  const client = new StoreClient(storeConfigFrom(flags), createLogger({ level: 'warn' }));
  try {
    const r = await runGc(b[1]!, client, { graceMs, delete: flags.delete === true });
    if (flags.json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    else {
      for (const x of r.unreferenced) process.stdout.write(`${r.dryRun ? 'would delete' : 'deleted'} s3://${r.bucket}/${x.key} (${formatSize(x.size)}, ${x.lastModified})\n`);
      process.stdout.write(
        `s3://${r.bucket}: ${r.manifests} manifests, ${r.chunkObjects} chunk objects, ${r.referenced} referenced, ${r.unreferenced.length} unreferenced past the grace period, ${r.young} younger` +
          `${r.dryRun ? ' (dry run: --delete deletes them)' : `; ${r.deleted} deleted`}\n`,
      );
    }
  } finally {
    client.close();
  }
}

/**
 * The bound shown is the one the cache is kept to: the running server's (recorded in the
 * directory, cache-bound.ts), else the last server's, else this command's --cache-size.
 */
export async function cacheShowAction(flags: ObjectStoreFlags & { json?: boolean }): Promise<void> {
  const { cacheDir, cacheSize } = cacheConfigFrom(flags);
  const s = await inspectCacheDir(cacheDir);
  const rec = await readCacheBound(s.dir);
  const maxBytes = rec?.maxBytes ?? cacheSize;
  const bound = rec
    ? { source: rec.running ? 'running-server' : 'last-server', pid: rec.pid, minFreeBytes: rec.minFreeBytes, startedAt: rec.startedAt }
    : { source: 'this-command' };
  const said = !rec
    ? "this command's --cache-size (no server has used this cache)"
    : rec.running
      ? `set by the running server (pid ${rec.pid})`
      : `set by the last server (pid ${rec.pid}, not running)`;
  if (flags.json) process.stdout.write(`${JSON.stringify({ ...s, maxBytes, bound }, null, 2)}\n`);
  else process.stdout.write(`cache ${s.dir}: ${s.chunks} chunks, ${formatSize(s.bytes)} (bound ${formatSize(maxBytes)}, ${said})\n`);
}

export async function cacheClearAction(flags: ObjectStoreFlags): Promise<void> {
  const { cacheDir } = cacheConfigFrom(flags);
  const n = await clearCacheDir(cacheDir);
  process.stdout.write(`cache ${path.resolve(cacheDir)}: removed ${n} chunks\n`);
}
