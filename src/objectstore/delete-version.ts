/**
 * `cownbd delete s3://BUCKET/PREFIX@VERSION`: withdraw one published version.
 *
 *   HEAD PREFIX/manifests/VERSION.json  (absent → "not found", nothing done)
 *   DELETE it                            (the only object touched)
 *
 * Chunks are shared by content with other versions and images, so they are never deleted
 * here: `gc` finds the ones no remaining manifest names and reclaims them (docs/object-store.md
 * "Deleting a version"). The version must be named exactly (@VERSION): an address without
 * one would mean "the newest", and a typo must not delete that.
 * Overlays pinned to the version are the caller's concern (the CLI scans the overlay files
 * it is given and refuses unless forced: cli/objectstore-delete.ts).
 */
import { listVersions } from './manifest-cache.js';
import type { StoreClient } from './store-client.js';
import { formatObjectStoreUri, manifestKey, parseObjectStoreUri } from './uri.js';

export interface DeleteVersionResult {
  /** The pinned address that was deleted. */
  deleted: string;
  /** The versions still published, oldest first (the last is what an address without @VERSION now means). */
  remaining: string[];
}

/** The pinned address `text` names; an address without @VERSION is refused. */
export function versionToDelete(text: string): string {
  const u = parseObjectStoreUri(text);
  if (u.version === undefined) throw new Error(`${text}: name the version to delete (s3://BUCKET/PREFIX@VERSION; \`cownbd info ${text}\` lists them)`);
  return formatObjectStoreUri(u);
}

export async function deleteVersion(text: string, client: StoreClient): Promise<DeleteVersionResult> {
  const pinned = versionToDelete(text);
  const u = parseObjectStoreUri(pinned);
  const key = manifestKey(u, u.version!);
  if ((await client.size(u.bucket, key)) === undefined) throw new Error(`${pinned}: no such version (s3://${u.bucket}/${key} is not stored at ${client.describe()})`);
  await client.delete(u.bucket, key);
  return { deleted: pinned, remaining: await listVersions(client, u) };
}
