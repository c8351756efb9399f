/**
 * ManifestCache: every manifest a process uses, parsed once and kept — in memory (one
 * shared copy per version for every export, overlay and open) and on disk next to the
 * chunk cache, so a warm server opens, reconnects and restarts while the store is down.
 *
 *   resolve('s3://b/img')       → LIST (newest version); store unreachable → the newest
 *                                  version cached on disk for b/img (a warning says so)
 *   resolve('s3://b/img@V')     → memory → DIR/manifests/<id>/V.cmf (verified) → GET
 *
 * Facts it relies on (docs/object-store.md): a manifest is written once and never changed,
 * so a version's manifest may be kept forever; its object name is its version id.
 *
 * Disk file: DIR/manifests/<id>/VERSION.cmf, the compact binary form (manifest-binary.ts,
 * docs/object-store.md): the version's fields, its chunk hashes as 32-byte entries, the
 * SHA-256 of the published bytes it came from, and a checksum over the file. Read back, it
 * is checked field by field (image, version, checksum), so a torn or damaged file is
 * noticed, dropped and fetched again (never used); its table is used as read, without a
 * JSON parse (open of a 1 TiB image: ~0.1 s, the JSON took seconds). Files are written under tmp/ and renamed
 * (complete or absent). `VERSION.mf` files of earlier releases are read and converted.
 * <id> is a hash of bucket/prefix (prefix segments are free-form; this keeps one flat level).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../logging.js';
import { decodeManifest, type Manifest } from './manifest.js';
import { decodeCompactManifest, encodeCompactManifest, readCompactFile } from './manifest-binary.js';
import { ObjectNotFoundError, type StoreClient } from './store-client.js';
import { formatObjectStoreUri, manifestFolder, manifestKey, parseObjectStoreUri, VERSION_PATTERN, type ObjectStoreUri } from './uri.js';

/** First line of the cache files of earlier releases (`VERSION.mf`), still read. */
const LEGACY_MAGIC = 'cownbd-manifest-cache 1';

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
    await this.writeDisk(uri, manifest, createHash('sha256').update(bytes).digest('hex')).catch((err: unknown) =>
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
    const versions = names.map((n) => /^(.+)\.(?:cmf|mf)$/.exec(n)?.[1]).filter((v): v is string => v !== undefined && VERSION_PATTERN.test(v));
    return [...new Set(versions)].sort();
  }

  /** The compact file (checked field by field and by its checksum); else a legacy `.mf`, converted. */
  private async readDisk(uri: PinnedUri): Promise<Manifest | undefined> {
    if (this.dir === undefined) return undefined;
    const file = path.join(this.folder(uri), `${uri.version}.cmf`);
    const read = await readCompactFile(file).catch(() => undefined);
    if (read) {
      try {
        const f = decodeCompactManifest(read.data, file, read.bodySha256);
        if (f.image !== `${uri.bucket}/${uri.prefix}`) throw new Error(`it belongs to ${f.image}`);
        if (f.manifest.version !== uri.version) throw new Error(`it holds version ${f.manifest.version}`);
        return f.manifest;
      } catch (err) {
        this.log.warn({ file, err: (err as Error).message }, 'cached manifest is damaged: dropped, fetching it again');
        await unlink(file).catch(() => {});
      }
    }
    return this.readLegacy(uri);
  }

  /**
   * A `.mf` file (a header line, then the published JSON) written by cownbd before the
   * compact form: used and converted, so an upgraded server still starts during an outage.
   */
  private async readLegacy(uri: PinnedUri): Promise<Manifest | undefined> {
    const file = path.join(this.folder(uri), `${uri.version}.mf`);
    const data = await readFile(file).catch(() => undefined);
    if (!data) return undefined;
    const nl = data.indexOf(0x0a);
    const header = nl < 0 ? '' : data.subarray(0, nl).toString('latin1');
    const bytes = data.subarray(nl + 1);
    const sha = createHash('sha256').update(bytes).digest('hex');
    try {
      if (header !== `${LEGACY_MAGIC} ${uri.bucket}/${uri.prefix} ${sha}`) throw new Error('header or hash does not match its contents');
      const m = decodeManifest(bytes, formatObjectStoreUri(uri));
      if (m.version !== uri.version) throw new Error(`it holds version ${m.version}`);
      await this.writeDisk(uri, m, sha).then(
        () => unlink(file),
        () => {},
      );
      return m;
    } catch (err) {
      this.log.warn({ file, err: (err as Error).message }, 'cached manifest is damaged: dropped, fetching it again');
      await unlink(file).catch(() => {});
      return undefined;
    }
  }

  private async writeDisk(uri: PinnedUri, manifest: Manifest, publishedSha256: string): Promise<void> {
    if (this.dir === undefined) return;
    const folder = this.folder(uri);
    const tmpDir = path.join(this.dir, 'tmp');
    await mkdir(folder, { recursive: true });
    await mkdir(tmpDir, { recursive: true });
    const tmp = path.join(tmpDir, `manifest.${uri.version}.${randomBytes(4).toString('hex')}`);
    try {
      await writeFile(tmp, encodeCompactManifest(manifest, `${uri.bucket}/${uri.prefix}`, publishedSha256));
      await rename(tmp, path.join(folder, `${uri.version}.cmf`));
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
  }
}
