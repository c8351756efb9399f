/**
 * Command-line options for object-store access, shared by serve, publish, create, info,
 * map, convert and cache, and the one place that turns them (plus COWNBD_S3_* and the
 * standard AWS environment variables, read when a command runs — never at import) into a
 * context.
 *
 * The context is created lazily, on the first s3:// image a command meets (a local image
 * whose cow header names an s3:// backing counts), so commands on local files never touch
 * the cache directory or the network — nor load the object-store code (its manifest
 * schema needs zod) or a logger, which are imported on that first use.
 */
import os from 'node:os';
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { FileIo } from '../block/file-io.js';
import type { Logger } from '../logging.js';
import { parseSize } from '../util/size.js';
import type { ObjectStoreContext } from './open.js';
import { DEFAULT_STORE_CONFIG, type StoreConfig } from './store-client.js';

export interface ObjectStoreFlags {
  s3Endpoint?: string;
  s3Region?: string;
  s3Addressing?: 'path' | 'virtual';
  s3MaxGets?: number;
  s3Timeout?: number;
  s3Retries?: number;
  cacheDir?: string;
  cacheSize?: string;
  cacheMinFree?: string;
}

function positiveInt(what: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < 1) throw new InvalidArgumentError(`${what} must be a positive integer (got "${v}")`);
    return n;
  };
}

/** Cache options only (`cownbd cache`). */
export function addCacheOptions(cmd: Command): Command {
  return cmd
    .option('--cache-dir <dir>', 'local chunk cache for s3:// images (default: $XDG_CACHE_HOME/cownbd or ~/.cache/cownbd)')
    .option('--cache-size <size>', 'bound of the chunk cache, e.g. 20G (LRU eviction)', '10G')
    .option('--cache-min-free <size>', 'keep this much free on the cache\'s file system: older chunks are evicted, or new ones not kept', '1G');
}

export function addObjectStoreOptions(cmd: Command): Command {
  addCacheOptions(cmd)
    .option('--s3-endpoint <url>', 'S3-compatible endpoint (MinIO, Ceph RGW, Garage); default: the config file\'s, $COWNBD_S3_ENDPOINT, $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS')
    .option('--s3-region <region>', 'region (default: the config file\'s, $COWNBD_S3_REGION, $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1)')
    .addOption(new Option('--s3-addressing <style>', 'bucket addressing (default: the config file\'s, $COWNBD_S3_ADDRESSING, else path with a custom endpoint, virtual on AWS)').choices(['path', 'virtual']))
    .option('--s3-max-gets <n>', 'bound on parallel chunk GETs', positiveInt('--s3-max-gets'), DEFAULT_STORE_CONFIG.maxParallelGets)
    .option('--s3-timeout <ms>', 'give up on one S3 operation (all retries) after this many ms', positiveInt('--s3-timeout'), DEFAULT_STORE_CONFIG.deadlineMs)
    .option('--s3-retries <n>', 'retries per S3 operation (exponential backoff)', (v) => Number(v), DEFAULT_STORE_CONFIG.maxAttempts - 1);
  return cmd;
}

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'cownbd');
}

/**
 * The first value set, with the name an error should blame. Flags include what a config
 * file set (the CLI merges its [object-store] table in as flags, program-config.ts), so the
 * order is: command line, config file, COWNBD_S3_*, then the AWS SDK's own variables
 * (docs/object-store.md#one-default-for-every-command). Empty variables count as unset.
 */
function firstOf(sources: ReadonlyArray<[string, string | undefined]>): { value: string; from: string } | undefined {
  for (const [from, value] of sources) if (value !== undefined && value !== '') return { value, from };
  return undefined;
}

export function storeConfigFrom(flags: ObjectStoreFlags, env: NodeJS.ProcessEnv = process.env): StoreConfig {
  const ep = firstOf([['--s3-endpoint', flags.s3Endpoint], ['COWNBD_S3_ENDPOINT', env.COWNBD_S3_ENDPOINT], ['AWS_ENDPOINT_URL_S3', env.AWS_ENDPOINT_URL_S3], ['AWS_ENDPOINT_URL', env.AWS_ENDPOINT_URL]]);
  const endpoint = ep?.value;
  if (ep && !/^https?:\/\/[^/]+/.test(ep.value)) throw new Error(`${ep.from} must be an http(s):// URL (got "${ep.value}")`);
  const addr = firstOf([['--s3-addressing', flags.s3Addressing], ['COWNBD_S3_ADDRESSING', env.COWNBD_S3_ADDRESSING]]);
  if (addr && addr.value !== 'path' && addr.value !== 'virtual') throw new Error(`${addr.from} must be path or virtual (got "${addr.value}")`);
  const retries = flags.s3Retries ?? DEFAULT_STORE_CONFIG.maxAttempts - 1;
  if (!Number.isInteger(retries) || retries < 0 || retries > 20) throw new Error(`--s3-retries must be 0-20 (got "${flags.s3Retries}")`);
  const deadlineMs = flags.s3Timeout ?? DEFAULT_STORE_CONFIG.deadlineMs;
  return {
    endpoint: endpoint || undefined,
    region: firstOf([['', flags.s3Region], ['', env.COWNBD_S3_REGION], ['', env.AWS_REGION], ['', env.AWS_DEFAULT_REGION]])?.value ?? 'us-east-1',
    forcePathStyle: (addr?.value ?? (endpoint ? 'path' : 'virtual')) === 'path',
    maxParallelGets: flags.s3MaxGets ?? DEFAULT_STORE_CONFIG.maxParallelGets,
    // One attempt may use at most a third of the whole budget, so retries get their turn.
    requestTimeoutMs: Math.min(DEFAULT_STORE_CONFIG.requestTimeoutMs, Math.max(500, Math.floor(deadlineMs / 3))),
    deadlineMs,
    maxAttempts: retries + 1,
  };
}

export function cacheConfigFrom(flags: ObjectStoreFlags): { cacheDir: string; cacheSize: number; cacheMinFree: number } {
  return {
    cacheDir: flags.cacheDir ?? defaultCacheDir(),
    cacheSize: parseSize(flags.cacheSize ?? '10G', '--cache-size'),
    cacheMinFree: parseSize(flags.cacheMinFree ?? '1G', '--cache-min-free'),
  };
}

/** A memoised context factory; `close()` releases it if it was ever created. */
export interface LazyObjectStore {
  (): Promise<ObjectStoreContext>;
  /** The context if one was created and is ready (metrics read it without creating one). */
  peek(): ObjectStoreContext | undefined;
  close(): Promise<void>;
}

/**
 * `log`: where the cache reports (default: nowhere, as the image tools want it);
 * `recordBound`: a server, whose cache bound `cache show` should report (cache-bound.ts).
 */
export function lazyObjectStore(flags: ObjectStoreFlags, log?: Logger, io?: FileIo, recordBound = false): LazyObjectStore {
  let ctx: Promise<ObjectStoreContext> | undefined;
  let ready: ObjectStoreContext | undefined;
  const get = (() => {
    ctx ??= (async () => {
      const store = storeConfigFrom(flags);
      const { createObjectStoreContext } = await import('./open.js');
      return createObjectStoreContext({ store, ...cacheConfigFrom(flags), log: log ?? (await import('../logging.js')).silentLogger(), io, recordBound });
    })().then((c) => (ready = c));
    return ctx;
  }) as LazyObjectStore;
  get.peek = () => ready;
  get.close = async () => {
    if (ctx) await (await ctx).close();
  };
  return get;
}
