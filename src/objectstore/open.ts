/**
 * The seam between the object store and the rest of cownbd.
 *
 *   const ctx = await createObjectStoreContext({ store, cacheDir, cacheSize, log });
 *   const dev = await openObjectStoreBase('s3://golden/debian-12', ctx);   // newest version
 *   dev.pinnedUri  → 's3://golden/debian-12@20261202T141500Z-1a2b3c4d'
 *
 * One context per process: one S3 client (one connection pool, one GET bound), one
 * chunk cache and one manifest cache (manifest-cache.ts: one parsed copy per version,
 * kept on disk too) shared by every export. Configuration comes in as values; nothing here reads
 * the environment.
 */
import type { FileIo } from '../block/file-io.js';
import type { Logger } from '../logging.js';
import { recordCacheBound } from './cache-bound.js';
import { ChunkCache } from './chunk-cache.js';
import { manifestMtime, type Manifest } from './manifest.js';
import { fetchManifest, listVersions, ManifestCache } from './manifest-cache.js';
import { ObjectStoreDevice } from './object-store-device.js';
import { StoreClient, type StoreConfig } from './store-client.js';
import { manifestFolder, parseObjectStoreUri, type ObjectStoreUri } from './uri.js';

export { listVersions };

export interface ObjectStoreContext {
  readonly client: StoreClient;
  readonly cache: ChunkCache;
  readonly manifests: ManifestCache;
  readonly log: Logger;
  close(): Promise<void>;
}

export interface ObjectStoreContextOptions {
  readonly store: StoreConfig;
  readonly cacheDir: string;
  readonly cacheSize: number;
  /** Free-space floor of the cache's file system (bytes; 0: none). */
  readonly cacheMinFree?: number;
  readonly log: Logger;
  /** I/O policy for reading cache files (the server's; default: every fast path). */
  readonly io?: FileIo;
  /** A server: record its bound in the cache directory for `cache show` (cache-bound.ts). */
  readonly recordBound?: boolean;
}

export async function createObjectStoreContext(o: ObjectStoreContextOptions): Promise<ObjectStoreContext> {
  const client = new StoreClient(o.store, o.log);
  const cache = await ChunkCache.open({ dir: o.cacheDir, maxBytes: o.cacheSize, minFreeBytes: o.cacheMinFree, log: o.log, io: o.io });
  if (o.recordBound) {
    const record = { pid: process.pid, maxBytes: o.cacheSize, minFreeBytes: o.cacheMinFree ?? 0, startedAt: new Date().toISOString() };
    // Only `cache show` reads it: a cache directory we cannot write a small file to is the cache's problem, not this one's.
    await recordCacheBound(cache.dir, record).catch((err: Error) => o.log.warn({ cacheDir: cache.dir, err: err.message }, 'could not record the cache bound for cache show'));
  }
  return {
    client,
    cache,
    manifests: new ManifestCache(client, cache.dir, o.log),
    log: o.log,
    async close() {
      await cache.close();
      client.close();
    },
  };
}

/** The manifest the address names (its version, or the newest), asked of the store itself (`info`). */
export async function loadManifest(client: StoreClient, text: string): Promise<{ uri: ObjectStoreUri & { version: string }; manifest: Manifest }> {
  const u = parseObjectStoreUri(text);
  let version = u.version;
  if (version === undefined) {
    const versions = await listVersions(client, u);
    version = versions[versions.length - 1];
    if (version === undefined) throw new Error(`${text}: nothing published there (no manifests under s3://${u.bucket}/${manifestFolder(u)} at ${client.describe()})`);
  }
  const { manifest } = await fetchManifest(client, { ...u, version });
  return { uri: { ...u, version }, manifest };
}

export async function openObjectStoreBase(text: string, ctx: ObjectStoreContext): Promise<ObjectStoreDevice> {
  const { uri, manifest } = await ctx.manifests.resolve(text);
  return new ObjectStoreDevice(uri, manifest, ctx);
}

/**
 * size + mtime of an s3:// image as a cow header records them (virtual size, manifest
 * creation second): what cow's backing check compares for a remote backing.
 */
export function remoteBackingStat(objectStore: () => Promise<ObjectStoreContext>): (address: string) => Promise<{ size: number; mtime: number }> {
  return async (address) => {
    const { manifest } = await (await objectStore()).manifests.resolve(address);
    return { size: manifest.virtualSize, mtime: manifestMtime(manifest) };
  };
}
