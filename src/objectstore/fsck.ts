/**
 * `cownbd fsck s3://BUCKET/PREFIX[@VERSION]`: is every published version of an image
 * whole? Every manifest must decode, and every chunk it names must be stored with the
 * right bytes (GET and SHA-256; `quick`: HEAD and length only).
 *
 *   versions ─► manifests (each must decode and name itself)
 *            └► distinct chunks (a chunk shared by versions is checked once)
 *                 missing  (404)                 → corrupt
 *                 damaged  (length or SHA-256)   → corrupt (`publish` of the image repairs it)
 *                 unreadable (store unreachable) → could not check
 *
 * Read-only: fsck never writes to the bucket. Bodies are hashed here (not by the GET's
 * retry check), so a damaged chunk is one GET, not a round of retries; network faults are
 * still retried by the client.
 */
import { sha256Hex } from './chunk-cache.js';
import { chunkLength, type Manifest } from './manifest.js';
import { fetchManifest, listVersions } from './manifest-cache.js';
import { ObjectNotFoundError, type StoreClient } from './store-client.js';
import { formatObjectStoreUri, parseObjectStoreUri } from './uri.js';

export interface FsckProblem {
  /** The version (manifest problems) or the chunk hash. */
  readonly what: string;
  readonly problem: 'manifest' | 'missing' | 'damaged';
  readonly detail: string;
  /** Versions whose data the problem affects. */
  readonly versions: string[];
}

export interface FsckResult {
  image: string;
  endpoint: string;
  versions: string[];
  chunks: number;
  checkedBytes: number;
  problems: FsckProblem[];
  /** Set when the check could not finish (store unreachable). */
  error: string | null;
  result: 'clean' | 'corrupt' | 'error';
}

export interface FsckOptions {
  readonly quick?: boolean;
  readonly parallel?: number;
}

export async function runFsck(address: string, client: StoreClient, o: FsckOptions = {}): Promise<FsckResult> {
  const u = parseObjectStoreUri(address);
  const r: FsckResult = { image: formatObjectStoreUri({ bucket: u.bucket, prefix: u.prefix }), endpoint: client.describe(), versions: [], chunks: 0, checkedBytes: 0, problems: [], error: null, result: 'clean' };
  try {
    r.versions = u.version === undefined ? await listVersions(client, u) : [u.version];
    // chunk hash → { length, versions naming it, chunk prefix }
    const chunks = new Map<string, { length: number; prefix: string; versions: string[] }>();
    for (const version of r.versions) {
      let m: Manifest;
      try {
        m = (await fetchManifest(client, { ...u, version })).manifest;
      } catch (err) {
        if (!(err instanceof ObjectNotFoundError) && (err as Error).name !== 'ManifestError' && !/does not match its object name/.test((err as Error).message)) throw err;
        r.problems.push({ what: version, problem: 'manifest', detail: (err as Error).message, versions: [version] });
        continue;
      }
      m.chunks.forEach((hash, i) => {
        if (hash === null) return;
        const c = chunks.get(hash) ?? { length: chunkLength(m, i), prefix: m.chunkPrefix, versions: [] };
        if (!c.versions.includes(version)) c.versions.push(version);
        chunks.set(hash, c);
      });
    }
    r.chunks = chunks.size;
    const queue = [...chunks.entries()];
    const worker = async (): Promise<void> => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const [hash, c] = next;
        const problem = await checkChunk(client, u.bucket, `${c.prefix}${hash}`, hash, c.length, o.quick === true);
        if (problem) r.problems.push({ what: hash, ...problem, versions: c.versions });
        else r.checkedBytes += c.length;
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, o.parallel ?? 8) }, worker));
  } catch (err) {
    r.error = (err as Error).message;
  }
  r.result = r.error !== null ? 'error' : r.problems.length > 0 ? 'corrupt' : 'clean';
  return r;
}

async function checkChunk(client: StoreClient, bucket: string, key: string, hash: string, length: number, quick: boolean): Promise<Pick<FsckProblem, 'problem' | 'detail'> | undefined> {
  if (quick) {
    const size = await client.size(bucket, key);
    if (size === undefined) return { problem: 'missing', detail: `s3://${bucket}/${key} is not stored` };
    return size === length ? undefined : { problem: 'damaged', detail: `stored length ${size}, expected ${length}` };
  }
  let body: Buffer;
  try {
    body = await client.get(bucket, key);
  } catch (err) {
    if (err instanceof ObjectNotFoundError) return { problem: 'missing', detail: `s3://${bucket}/${key} is not stored` };
    throw err;
  }
  if (body.length !== length) return { problem: 'damaged', detail: `stored length ${body.length}, expected ${length}` };
  return sha256Hex(body) === hash ? undefined : { problem: 'damaged', detail: 'bytes do not match the SHA-256 it is named by' };
}
