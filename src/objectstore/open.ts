/**
 * The seam between the object store and the rest of cownbd.
 *
 *   const ctx = await createObjectStoreContext({ store, cacheDir, cacheSize, log });
 *   const dev = await openObjectStoreBase('s3://golden/debian-12', ctx);   // newest version
 *   dev.pinnedUri  → 's3://golden/debian-12@20261202T141500Z-1a2b3c4d'
 *
 * One context per process: one S3 client (one connection pool, one GET bound) and one
 * chunk cache shared by every export. Configuration comes in as values; nothing here reads
 * the environment.
 */
import type { FileIo } from '../block/file-io.js';
import type { Logger } from '../logging.js';
import { ChunkCache } from './chunk-cache.js';
import { decodeManifest, manifestMtime, type Manifest } from './manifest.js';
import { ObjectStoreDevice } from './object-store-device.js';
import { StoreClient, type StoreConfig } from './store-client.js';
import { formatObjectStoreUri, manifestFolder, manifestKey, parseObjectStoreUri, VERSION_PATTERN, type ObjectStoreUri } from './uri.js';

export interface ObjectStoreContext {
  readonly client: StoreClient;
  readonly cache: ChunkCache;
  readonly log: Logger;
  close(): Promise<void>;
}

export interface ObjectStoreContextOptions {
  readonly store: StoreConfig;
  readonly cacheDir: string;
  readonly cacheSize: number;
  readonly log: Logger;
  /** I/O policy for reading cache files (the server's; default: every fast path). */
  readonly io?: FileIo;
}

export async function createObjectStoreContext(o: ObjectStoreContextOptions): Promise<ObjectStoreContext> {
  const client = new StoreClient(o.store, o.log);
  const cache = await ChunkCache.open({ dir: o.cacheDir, maxBytes: o.cacheSize, log: o.log, io: o.io });
  return {
    client,
    cache,
    log: o.log,
    async close() {
      await cache.close();
      client.close();
    },
  };
}

/** Every published version of an image, oldest first (version ids sort by time). */
export async function listVersions(client: StoreClient, u: ObjectStoreUri): Promise<string[]> {
  const folder = manifestFolder(u);
  return (await client.list(u.bucket, folder))
    .map((k) => k.slice(folder.length).replace(/\.json$/, ''))
    .filter((v) => VERSION_PATTERN.test(v))
    .sort();
}

/** The manifest the address names (its version, or the newest). */
export async function loadManifest(client: StoreClient, text: string): Promise<{ uri: ObjectStoreUri & { version: string }; manifest: Manifest }> {
  const u = parseObjectStoreUri(text);
  let version = u.version;
  if (version === undefined) {
    const versions = await listVersions(client, u);
    version = versions[versions.length - 1];
    if (version === undefined) throw new Error(`${text}: nothing published there (no manifests under s3://${u.bucket}/${manifestFolder(u)} at ${client.describe()})`);
  }
  const pinned = { ...u, version };
  const where = formatObjectStoreUri(pinned);
  const manifest = decodeManifest(await client.get(u.bucket, manifestKey(u, version)), where);
  if (manifest.version !== version) throw new Error(`${where}: manifest field version = "${manifest.version}" does not match its object name`);
  return { uri: pinned, manifest };
}

export async function openObjectStoreBase(text: string, ctx: ObjectStoreContext): Promise<ObjectStoreDevice> {
  const { uri, manifest } = await loadManifest(ctx.client, text);
  return new ObjectStoreDevice(uri, manifest, ctx);
}

/**
 * size + mtime of an s3:// image as a cow header records them (virtual size, manifest
 * creation second): what cow's backing check compares for a remote backing.
 */
export function remoteBackingStat(objectStore: () => Promise<ObjectStoreContext>): (address: string) => Promise<{ size: number; mtime: number }> {
  return async (address) => {
    const { manifest } = await loadManifest((await objectStore()).client, address);
    return { size: manifest.virtualSize, mtime: manifestMtime(manifest) };
  };
}
