/**
 * `cownbd publish IMAGE s3://BUCKET/PREFIX`: store an image (any format or chain openImage
 * opens) as content-addressed chunks plus one new immutable manifest.
 *
 *   for each chunk (parallel, `concurrency` workers):
 *     block status says zero, or the bytes are all zero  → null in the manifest, nothing sent
 *     else sha256 → HEAD chunkPrefix+hash → PUT if absent, or if its stored length is wrong
 *          (with `verify`: GET and hash it too) — a damaged chunk is repaired, never trusted
 *   then PUT PREFIX/manifests/<new version>.json (last: a manifest never names a missing chunk)
 *
 * Resumable: an interrupted publish leaves only chunk objects; running it again finds them
 * with HEAD and sends only the rest. Dedup: identical chunks of any image or version are
 * one object (same hash, same key), and within one run a hash is handled once.
 * Re-publishing always writes a NEW version; existing versions are never touched.
 */
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../block/block-device.js';
import { EXTENT_ZERO } from '../block/block-device.js';
import { sha256Hex } from './chunk-cache.js';
import { chunkCount, encodeManifest, newVersionId, type Manifest } from './manifest.js';
import type { StoreClient } from './store-client.js';
import { formatObjectStoreUri, manifestKey, parseObjectStoreUri } from './uri.js';

export interface PublishOptions {
  readonly chunkSize: number;
  readonly chunkPrefix: string;
  readonly concurrency: number;
  /** Recorded in the manifest for people (the local file name). */
  readonly source?: string;
  /** GET and hash every chunk already in the store (repairs bit rot, costs a download). */
  readonly verify?: boolean;
  /** Called with bytes processed so far. */
  readonly onProgress?: (done: number) => void;
  readonly now?: () => Date;
}

export interface PublishResult {
  uri: string;
  version: string;
  virtualSize: number;
  chunkSize: number;
  chunks: number;
  zeroChunks: number;
  uploadedChunks: number;
  presentChunks: number;
  /** Chunks found damaged in the store (wrong length; with verify, wrong bytes) and uploaded again. */
  repairedChunks: number;
  uploadedBytes: number;
  seconds: number;
}

export async function publishImage(device: BlockDevice, target: string, client: StoreClient, o: PublishOptions): Promise<PublishResult> {
  const u = parseObjectStoreUri(target);
  if (u.version !== undefined) throw new Error(`${target}: publish makes a new version; give the address without @VERSION`);
  const started = Date.now();
  const n = chunkCount(device.size, o.chunkSize);
  const chunks: (string | null)[] = new Array<string | null>(n).fill(null);
  const seen = new Map<string, Promise<Outcome>>();
  const r = { zeroChunks: 0, uploadedChunks: 0, presentChunks: 0, repairedChunks: 0, uploadedBytes: 0 };
  const zeros = Buffer.alloc(o.chunkSize);
  let next = 0;
  let done = 0;

  const worker = async (): Promise<void> => {
    const buf = Buffer.allocUnsafe(o.chunkSize);
    while (next < n) {
      const index = next++;
      const start = index * o.chunkSize;
      const len = Math.min(o.chunkSize, device.size - start);
      const data = buf.subarray(0, len);
      if ((await allZeroByStatus(device, start, len)) || (await readChunk(device, start, data), data.equals(zeros.subarray(0, len)))) {
        r.zeroChunks++;
      } else {
        chunks[index] = await storeChunk(data, { client, bucket: u.bucket, prefix: o.chunkPrefix, verify: o.verify === true, seen, counts: r });
      }
      done += len;
      o.onProgress?.(done);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.concurrency, n)) }, worker));
  await recheckPresent(device, chunks, o, { client, bucket: u.bucket, prefix: o.chunkPrefix, verify: false, seen, counts: r });

  const version = newVersionId((o.now ?? (() => new Date()))(), randomBytes(4));
  const manifest: Manifest = {
    version,
    created: (o.now ?? (() => new Date()))().toISOString(),
    virtualSize: device.size,
    chunkSize: o.chunkSize,
    chunkPrefix: o.chunkPrefix,
    ...(o.source === undefined ? {} : { source: o.source }),
    chunks,
  };
  await client.put(u.bucket, manifestKey(u, version), encodeManifest(manifest), 'application/json');
  return {
    uri: formatObjectStoreUri({ ...u, version }),
    version,
    virtualSize: device.size,
    chunkSize: o.chunkSize,
    chunks: n,
    ...r,
    seconds: (Date.now() - started) / 1000,
  };
}

interface ChunkStore {
  readonly client: StoreClient;
  readonly bucket: string;
  readonly prefix: string;
  readonly verify: boolean;
  /** Uploads started, by content hash (a chunk seen twice is sent once). */
  readonly seen: Map<string, Promise<Outcome>>;
  readonly counts: { uploadedChunks: number; presentChunks: number; repairedChunks: number; uploadedBytes: number };
}

type Outcome = 'uploaded' | 'present' | 'repaired';

/** Store one non-zero chunk by its content hash (unless the store has it); returns the hash. */
async function storeChunk(data: Buffer, t: ChunkStore): Promise<string> {
  const hash = sha256Hex(data);
  let upload = t.seen.get(hash);
  if (!upload) {
    upload = sendUnlessIntact(t, `${t.prefix}${hash}`, data, hash);
    t.seen.set(hash, upload);
    const outcome = await upload;
    if (outcome === 'present') t.counts.presentChunks++;
    else {
      t.counts.uploadedChunks++;
      t.counts.uploadedBytes += data.length;
      if (outcome === 'repaired') t.counts.repairedChunks++;
    }
  } else {
    await upload;
    t.counts.presentChunks++;
  }
  return hash;
}

/**
 * Chunks this publish found already stored (not uploaded by it) are checked once more right
 * before the manifest is written: `gc` may have deleted such a chunk (old and unreferenced)
 * meanwhile; it is read from the image and uploaded again (gc.ts).
 */
async function recheckPresent(device: BlockDevice, chunks: readonly (string | null)[], o: PublishOptions, t: ChunkStore): Promise<void> {
  const present: string[] = [];
  for (const [hash, outcome] of t.seen) if ((await outcome) === 'present') present.push(hash);
  const gone: string[] = [];
  for (let i = 0; i < present.length; i += o.concurrency) {
    const batch = present.slice(i, i + o.concurrency);
    const sizes = await Promise.all(batch.map((hash) => t.client.size(t.bucket, `${t.prefix}${hash}`)));
    batch.forEach((hash, j) => sizes[j] === undefined && gone.push(hash));
  }
  for (const hash of gone) {
    const index = chunks.indexOf(hash);
    const start = index * o.chunkSize;
    const data = Buffer.alloc(Math.min(o.chunkSize, device.size - start));
    await readChunk(device, start, data);
    await t.client.put(t.bucket, `${t.prefix}${hash}`, data, 'application/octet-stream', hash);
    t.counts.repairedChunks++;
  }
}

/** True when block status says the whole range reads as zeros (no read needed). */
async function allZeroByStatus(device: BlockDevice, start: number, len: number): Promise<boolean> {
  if (!device.capabilities.blockStatus) return false;
  let pos = start;
  while (pos < start + len) {
    const extents = await device.blockStatus(pos, start + len - pos);
    for (const e of extents) {
      if ((e.flags & EXTENT_ZERO) === 0) return false;
      pos += e.length;
    }
  }
  return true;
}

async function readChunk(device: BlockDevice, start: number, data: Buffer): Promise<void> {
  await device.read(start, data);
}

/** PUT unless an intact copy is stored (right length; with verify, right SHA-256). */
async function sendUnlessIntact(t: ChunkStore, key: string, data: Buffer, sha256: string): Promise<Outcome> {
  const stored = await t.client.size(t.bucket, key);
  if (stored === data.length && (!t.verify || sha256Hex(await t.client.get(t.bucket, key)) === sha256)) return 'present';
  await t.client.put(t.bucket, key, data, 'application/octet-stream', sha256);
  return stored === undefined ? 'uploaded' : 'repaired';
}
