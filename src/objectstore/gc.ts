/**
 * `cownbd gc s3://BUCKET`: find (and with `delete`, remove) chunk objects that no manifest
 * in the bucket names. Dry-run unless asked; never touches manifests.
 *
 *   LIST bucket ─► manifests (every one must decode, or gc stops: a manifest it cannot
 *                  read may name chunks it would delete)
 *               └► chunk objects (64-hex names under a chunk prefix some manifest uses, or
 *                  the default one) not named by any manifest and older than `graceMs`
 *   delete: LIST the manifests again right before deleting; chunks a new manifest names stay.
 *
 * Racing a publish: publish writes chunks, then its manifest. A chunk it just uploaded is
 * younger than the grace period; a chunk it found already stored (old, unreferenced — gc's
 * candidate) is checked again by publish right before the manifest is written, and uploaded
 * again if gc deleted it meanwhile (publish.ts). So a finished publish never names a chunk
 * gc removed, as long as publishing takes less than the grace period.
 */
import { decodeManifest } from './manifest.js';
import type { StoreClient } from './store-client.js';
import { VERSION_PATTERN } from './uri.js';

export const DEFAULT_GC_CHUNK_PREFIX = 'cownbd-chunks/sha256/';
const MANIFEST_KEY = /^(.+)\/manifests\/([^/]+)\.json$/;
const CHUNK_NAME = /^[0-9a-f]{64}$/;

export interface GcOptions {
  readonly graceMs: number;
  readonly delete: boolean;
  readonly now?: () => number;
}

export interface GcResult {
  bucket: string;
  manifests: number;
  chunkObjects: number;
  referenced: number;
  /** Unreferenced and older than the grace period: deleted (or, dry-run, would be). */
  unreferenced: Array<{ key: string; size: number; lastModified: string }>;
  /** Unreferenced but younger than the grace period (a publish may be under way). */
  young: number;
  deleted: number;
  dryRun: boolean;
}

interface References {
  readonly manifests: Set<string>;
  readonly chunks: Set<string>;
  readonly prefixes: Set<string>;
}

/** Read every manifest among `keys` not yet in `refs` and add what it names. Throws on one it cannot read. */
async function addReferences(client: StoreClient, bucket: string, keys: string[], refs: References): Promise<void> {
  for (const key of keys) {
    const m = MANIFEST_KEY.exec(key);
    if (!m || !VERSION_PATTERN.test(m[2]!) || refs.manifests.has(key)) continue;
    const manifest = decodeManifest(await client.get(bucket, key), `s3://${bucket}/${key}`);
    refs.manifests.add(key);
    refs.prefixes.add(manifest.chunkPrefix);
    for (const h of manifest.chunks) if (h !== null) refs.chunks.add(`${manifest.chunkPrefix}${h}`);
  }
}

export async function runGc(bucket: string, client: StoreClient, o: GcOptions): Promise<GcResult> {
  const now = (o.now ?? Date.now)();
  const objects = await client.listObjects(bucket, '');
  const refs: References = { manifests: new Set(), chunks: new Set(), prefixes: new Set([DEFAULT_GC_CHUNK_PREFIX]) };
  await addReferences(client, bucket, objects.map((x) => x.key), refs);
  const chunkObjects = objects.filter((x) => [...refs.prefixes].some((p) => x.key.startsWith(p) && CHUNK_NAME.test(x.key.slice(p.length))));
  const unreferenced = chunkObjects.filter((x) => !refs.chunks.has(x.key));
  let old = unreferenced.filter((x) => now - x.lastModified >= o.graceMs);
  const r: GcResult = {
    bucket,
    manifests: refs.manifests.size,
    chunkObjects: chunkObjects.length,
    referenced: chunkObjects.length - unreferenced.length,
    unreferenced: [],
    young: unreferenced.length - old.length,
    deleted: 0,
    dryRun: !o.delete,
  };
  if (o.delete) {
    // Manifests written since the first LIST (a publish finishing now) keep their chunks.
    await addReferences(client, bucket, await client.list(bucket, ''), refs);
    old = old.filter((x) => !refs.chunks.has(x.key));
    for (const x of old) {
      await client.delete(bucket, x.key);
      r.deleted++;
    }
  }
  r.unreferenced = old.map((x) => ({ key: x.key, size: x.size, lastModified: new Date(x.lastModified).toISOString() }));
  return r;
}
