/**
 * Object-store subcommands: `publish IMAGE s3://BUCKET/PREFIX`, `fsck s3://BUCKET/PREFIX`,
 * `gc s3://BUCKET`, `delete s3://BUCKET/PREFIX@VERSION` and `cache show|clear`.
 * Registration only: the actions (objectstore-actions.ts, with the progress bar and the
 * object-store code) are imported when one of these commands runs.
 */
import { type Command, Option } from 'commander';
import { FORMAT_NAMES } from '../formats/registry.js';
import { addCacheOptions, addObjectStoreOptions, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import type { FsckFlags, GcFlags, PublishFlags } from './objectstore-actions.js';
import type { DeleteFlags } from './objectstore-delete.js';

/** Chunk size when --chunk-size is not given (1 MiB: see docs/object-store.md). */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/** Where the shared, content-addressed chunks live when --chunk-prefix is not given. */
export const DEFAULT_CHUNK_PREFIX = 'cownbd-chunks/sha256/';

const actions = () => import('./objectstore-actions.js');

export function registerObjectStoreCommands(program: Command): void {
  addObjectStoreOptions(
    program
      .command('publish')
      .description('store an image (raw, cow, add-cow or a chain) in S3-compatible object storage as a new immutable version')
      .argument('<image>', 'image to publish (never modified)')
      .argument('<target>', 's3://BUCKET/PREFIX (a new version is made on every publish)')
      .addOption(new Option('-f, --format <format>', 'format of IMAGE (default: detected from its magic)').choices([...FORMAT_NAMES]))
      .addOption(new Option('-F, --backing-format <format>', 'format of its backing file').choices([...FORMAT_NAMES]))
      .option('--chunk-size <size>', 'chunk size, a power of two 64K-64M', `${DEFAULT_CHUNK_SIZE / 1024 / 1024}M`)
      .option('--chunk-prefix <key>', 'bucket folder of the (shared, content-addressed) chunks', DEFAULT_CHUNK_PREFIX)
      .option('-j, --parallel <n>', 'chunks in flight at once', (v) => Number(v), 16)
      .option('--verify', 'download and hash every chunk the store already has (repairs damaged ones; costs a download)')
      .option('-q, --quiet', 'no progress bar')
      .option('--json', 'print a JSON result (implies --quiet)'),
  ).action(async (image: string, target: string, flags: PublishFlags) => (await actions()).publishAction(image, target, flags));
  addObjectStoreOptions(
    program
      .command('fsck')
      .description('check that every version of a published image is whole: manifests decode, every chunk stored with the right bytes; exit 0 clean, 2 damaged, 1 could not check')
      .argument('<image>', 's3://BUCKET/PREFIX (every version) or s3://BUCKET/PREFIX@VERSION')
      .option('--quick', 'HEAD and length only (no download, no hashing)')
      .option('-j, --parallel <n>', 'chunks checked at once', (v) => Number(v), 8)
      .option('--json', 'machine-readable output'),
  ).action(async (image: string, flags: FsckFlags) => (await actions()).fsckAction(image, flags));
  addObjectStoreOptions(
    program
      .command('gc')
      .description('list (with --delete: delete) chunk objects no manifest in the bucket names, older than --grace; dry-run by default')
      .argument('<bucket>', 's3://BUCKET')
      .option('--grace <duration>', 'keep unreferenced chunks younger than this (a publish may be under way): e.g. 30m, 24h, 7d', '24h')
      .option('--delete', 'delete them (default: only list them)')
      .option('--json', 'machine-readable output'),
  ).action(async (bucket: string, flags: GcFlags) => (await actions()).gcAction(bucket, flags));
  addObjectStoreOptions(
    program
      .command('delete')
      .description('withdraw one published version (its manifest; `gc` then reclaims chunks no other version names); refused while an overlay given with --overlays pins it')
      .argument('<version>', 's3://BUCKET/PREFIX@VERSION (the version must be named)')
      .option('--overlays <path...>', 'overlay files or directories (e.g. a server\'s --overlay-dir) that must not pin the version')
      .option('--force', 'delete even if an overlay pins it (that overlay loses its base once gc runs)')
      .option('--json', 'machine-readable output'),
  ).action(async (version: string, flags: DeleteFlags) => (await import('./objectstore-delete.js')).deleteAction(version, flags));
  registerCacheCommands(program);
}

function registerCacheCommands(program: Command): void {
  const cache = program.command('cache').description('show or clear the local chunk cache of s3:// images');
  addCacheOptions(cache.command('show').description('what the cache holds').option('--json', 'machine-readable output')).action(
    async (flags: ObjectStoreFlags & { json?: boolean }) => (await actions()).cacheShowAction(flags),
  );
  addCacheOptions(cache.command('clear').description('delete every cached chunk (servers fetch them again)')).action(async (flags: ObjectStoreFlags) =>
    (await actions()).cacheClearAction(flags),
  );
}
