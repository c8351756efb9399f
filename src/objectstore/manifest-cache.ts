/**
 * ManifestCache: every manifest a process uses, parsed once and kept — in memory (one
 * shared copy per version for every export, overlay and open) and on disk next to the
 * chunk cache, so a warm server opens, reconnects and restarts while the store is down.
 *
 *   resolve('s3://b/img')       → LIST (newest version); store unreachable → the newest
 *                                  version cached on disk for b/img (a warning says so)
 *   resolve('s3://b/img@V')     → memory → DIR/manifests/<id>/V.mf (verified) → GET
 *
 * Facts it relies on (docs/object-store.md): a manifest is written once and never changed,
 * so a version's manifest may be kept forever; its object name is its version id.
 *
 * Disk file: one header line `cownbd-manifest-cache 1 <bucket>/<prefix> <sha256>` and the
 * manifest's exact bytes. The hash covers those bytes, so a torn or damaged file is
 * noticed, dropped and fetched again (never used); the bucket/prefix line guards against
 * a hash-of-name collision. Files are written under tmp/ and renamed (complete or absent).
 * <id> is a hash of bucket/prefix (prefix segments are free-form; this keeps one flat level).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../logging.js';
import { decodeManifest, type Manifest } from './manifest.js';
import { ObjectNotFoundError, type StoreClient } from './store-client.js';
import { formatObjectStoreUri, manifestFolder, manifestKey, parseObjectStoreUri, VERSION_PATTERN, type ObjectStoreUri } from './uri.js';

const MAGIC = 'cownbd-manifest-cache 1';

export type PinnedUri = ObjectStoreUri & { version: string };

export interface ResolvedManifest {
  readonly uri: PinnedUri;
  readonly manifest: Manifest;
}

/** Every published version of an image, oldest first (version ids sort by time). */
export async function listVersions(client: StoreClient, u: ObjectStoreUri): Promise<string[]> {
  const folder = manifestFolder(u);
  return (await client.list(u.bucket, folder))
    .map((k) => k.slice(folder.length).replace(/\.json$/, ''))
    .filter((v) => VERSION_PATTERN.test(v))
    .sort();
}

/** GET one version's manifest and check it names itself. */
export async function fetchManifest(client: StoreClient, pinned: PinnedUri): Promise<{ manifest: Manifest; bytes: Buffer }> {
  const where = formatObjectStoreUri(pinned);
  const bytes = await client.get(pinned.bucket, manifestKey(pinned, pinned.version));
  const manifest = decodeManifest(bytes, where);
  if (manifest.version !== pinned.version) throw new Error(`${where}: manifest field version = "${manifest.version}" does not match its object name`);
  return { manifest, bytes };
}

export class ManifestCache {
  private readonly memory = new Map<string, Promise<Manifest>>();

  /** `dir`: the cache directory (manifests/ and tmp/ below it); undefined: memory only. */
  constructor(
    private readonly client: StoreClient,
    private readonly dir: string | undefined,
    private readonly log: Logger,
  ) {}

  /** The manifest the address names (its version, or the newest). */
  async resolve(text: string): Promise<ResolvedManifest> {
    const u = parseObjectStoreUri(text);
    const version = u.version ?? (await this.newest(u, text));
    const uri = { ...u, version };
    return { uri, manifest: await this.pinned(uri) };
  }

  /** One version's manifest: one parse per process, shared by every caller. */
  pinned(uri: PinnedUri): Promise<Manifest> {
    const key = formatObjectStoreUri(uri);
    let p = this.memory.get(key);
    if (!p) {
      p = this.load(uri);
      this.memory.set(key, p);
      // A failure is not kept: the next open asks again (the store may be back).
      p.catch(() => this.memory.delete(key));
    }
    return p;
  }

  private async newest(u: ObjectStoreUri, text: string): Promise<string> {
    let versions: string[];
    try {
      versions = await listVersions(this.client, u);
    } catch (err) {
      // "No such bucket" is an answer; anything else (unreachable, 5xx, deadline) is an outage.
      const cached = err instanceof ObjectNotFoundError ? undefined : (await this.cachedVersions(u)).at(-1);
      if (cached === undefined) throw err;
      this.log.warn({ image: text, version: cached, err: (err as Error).message }, 'object store unreachable: using the newest version cached on this machine');
      return cached;
    }
    const newest = versions.at(-1);
    if (newest === undefined) throw new Error(`${text}: nothing published there (no manifests under s3://${u.bucket}/${manifestFolder(u)} at ${this.client.describe()})`);
    return newest;
  }

  private async load(uri: PinnedUri): Promise<Manifest> {
    const fromDisk = await this.readDisk(uri);
    if (fromDisk) return fromDisk;
    const { manifest, bytes } = await fetchManifest(this.client, uri);
    await this.writeDisk(uri, bytes).catch((err: unknown) =>
      this.log.warn({ manifest: formatObjectStoreUri(uri), err: (err as Error).message }, 'could not keep the manifest on disk (kept in memory)'),
    );
    return manifest;
  }

  private folder(u: ObjectStoreUri): string {
    const id = createHash('sha256').update(`${u.bucket}/${u.prefix}`).digest('hex').slice(0, 32);
    return path.join(this.dir!, 'manifests', id);
  }

  private async cachedVersions(u: ObjectStoreUri): Promise<string[]> {
    if (this.dir === undefined) return [];
    const names = await readdir(this.folder(u)).catch(() => [] as string[]);
    return names
      .filter((n) => n.endsWith('.mf'))
      .map((n) => n.slice(0, -3))
      .filter((v) => VERSION_PATTERN.test(v))
      .sort();
  }

  private async readDisk(uri: PinnedUri): Promise<Manifest | undefined> {
    if (this.dir === undefined) return undefined;
    const file = path.join(this.folder(uri), `${uri.version}.mf`);
    const data = await readFile(file).catch(() => undefined);
    if (!data) return undefined;
    const nl = data.indexOf(0x0a);
    const header = nl < 0 ? '' : data.subarray(0, nl).toString('latin1');
    const bytes = data.subarray(nl + 1);
    const want = `${MAGIC} ${uri.bucket}/${uri.prefix} ${createHash('sha256').update(bytes).digest('hex')}`;
    try {
      if (header !== want) throw new Error('header or hash does not match its contents');
      const m = decodeManifest(bytes, formatObjectStoreUri(uri));
      if (m.version !== uri.version) throw new Error(`it holds version ${m.version}`);
      return m;
    } catch (err) {
      this.log.warn({ file, err: (err as Error).message }, 'cached manifest is damaged: dropped, fetching it again');
      await unlink(file).catch(() => {});
      return undefined;
    }
  }

  private async writeDisk(uri: PinnedUri, bytes: Buffer): Promise<void> {
    if (this.dir === undefined) return;
    const folder = this.folder(uri);
    const tmpDir = path.join(this.dir, 'tmp');
    await mkdir(folder, { recursive: true });
    await mkdir(tmpDir, { recursive: true });
    const tmp = path.join(tmpDir, `manifest.${uri.version}.${randomBytes(4).toString('hex')}`);
    const header = Buffer.from(`${MAGIC} ${uri.bucket}/${uri.prefix} ${createHash('sha256').update(bytes).digest('hex')}\n`, 'latin1');
    try {
      await writeFile(tmp, Buffer.concat([header, bytes]));
      await rename(tmp, path.join(folder, `${uri.version}.mf`));
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
  }
}
