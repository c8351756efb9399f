/**
 * ObjectStoreDevice: a published image version (one manifest) as a read-only BlockDevice.
 *
 *   read(offset, buf) ─► per chunk: null hash → zeros
 *                                   hash      → ChunkCache (local file, or one verified GET)
 *
 * - Pinned: the manifest is immutable, so contents, size and block status never change
 *   for the device's lifetime; several devices (exports, processes) share a version safely.
 * - Block status: chunks the publisher skipped (all zeros) are HOLE|ZERO, so nbdcopy and
 *   qemu-img convert skip them; stored chunks are data. Depth 1, like a raw file's holes.
 * - NBD_CMD_CACHE fetches the asked chunks into the cache (bounded window at a time).
 * - Sequential read-ahead: after two reads that continue each other, the chunks following
 *   the read are prefetched (READ_AHEAD_BYTES); failures there are only logged at debug —
 *   the demand read that needs the chunk reports them.
 * - Errors: a chunk that cannot be fetched (store down after retries, missing object,
 *   hash mismatch) fails the read with EIO; nothing is thrown past the device.
 */
import {
  type BlockDevice,
  type DeviceCapabilities,
  DeviceError,
  EXTENT_HOLE,
  EXTENT_ZERO,
  type Extent,
  type LayerInfo,
} from '../block/block-device.js';
import type { Logger } from '../logging.js';
import type { ChunkCache, ChunkFetcher } from './chunk-cache.js';
import { chunkTableOf, type ChunkTable } from './chunk-table.js';
import { chunkLength, manifestMtime, type Manifest } from './manifest.js';
import type { StoreClient } from './store-client.js';
import { formatObjectStoreUri, type ObjectStoreUri } from './uri.js';

const READ_AHEAD_BYTES = 8 * 1024 * 1024;
const CACHE_WINDOW = 16;
const MAX_EXTENTS_PER_CALL = 1024;

const CAPABILITIES: DeviceCapabilities = Object.freeze({
  writable: false,
  flush: false,
  fua: false,
  trim: false,
  zero: false,
  fastZero: false,
  blockStatus: true,
  cache: true,
  multiConn: true,
});

export interface ObjectStoreDeviceDeps {
  readonly client: StoreClient;
  readonly cache: ChunkCache;
  readonly log: Logger;
}

export class ObjectStoreDevice implements BlockDevice {
  readonly capabilities = CAPABILITIES;
  readonly preferredBlockSize = 4096;
  readonly size: number;
  /** The address with the version pinned: what overlays record. */
  readonly pinnedUri: string;
  /** The chunk hashes (shared with every device of this version: never copied per device). */
  private readonly table: ChunkTable;
  private nextSequential = -1;
  private streak = 0;

  constructor(
    readonly uri: ObjectStoreUri & { version: string },
    readonly manifest: Manifest,
    private readonly deps: ObjectStoreDeviceDeps,
  ) {
    this.size = manifest.virtualSize;
    this.table = chunkTableOf(manifest);
    this.pinnedUri = formatObjectStoreUri(uri);
  }

  async read(offset: number, target: Buffer): Promise<void> {
    const cs = this.manifest.chunkSize;
    const end = offset + target.length;
    const parts: Promise<void>[] = [];
    for (let pos = offset; pos < end; ) {
      const index = Math.floor(pos / cs);
      const inChunk = pos - index * cs;
      const n = Math.min(end - pos, cs - inChunk);
      const slice = target.subarray(pos - offset, pos - offset + n);
      const hash = this.table.hash(index);
      if (hash === null) slice.fill(0);
      else parts.push(this.deps.cache.read(hash, chunkLength(this.manifest, index), inChunk, slice, this.fetcher(hash)).catch((err: unknown) => this.fail(index, err)));
      pos += n;
    }
    this.readAhead(offset, end);
    await Promise.all(parts);
  }

  async write(): Promise<void> {
    throw new DeviceError('EPERM', `${this.pinnedUri} is read-only`);
  }
  async flush(): Promise<void> {}
  async trim(): Promise<void> {
    throw new DeviceError('EPERM', `${this.pinnedUri} is read-only`);
  }
  async writeZeroes(): Promise<void> {
    throw new DeviceError('EPERM', `${this.pinnedUri} is read-only`);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const cs = this.manifest.chunkSize;
    const end = offset + length;
    const out: Extent[] = [];
    for (let pos = offset; pos < end && out.length < MAX_EXTENTS_PER_CALL; ) {
      const index = Math.floor(pos / cs);
      const n = Math.min(end - pos, (index + 1) * cs - pos);
      const flags = this.table.isZero(index) ? EXTENT_HOLE | EXTENT_ZERO : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags) out[out.length - 1] = { ...last, length: last.length + n };
      else out.push({ length: n, flags, depth: 1 });
      pos += n;
    }
    return out;
  }

  async cache(offset: number, length: number): Promise<void> {
    const cs = this.manifest.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / cs);
    for (let i = first; i <= last; i += CACHE_WINDOW) {
      const window: Promise<void>[] = [];
      for (let j = i; j <= Math.min(last, i + CACHE_WINDOW - 1); j++) window.push(this.prefetch(j));
      await Promise.all(window);
    }
  }

  async close(): Promise<void> {}

  describe(): LayerInfo {
    const stored = this.table.storedCount();
    return {
      format: 's3',
      path: this.pinnedUri,
      detail: {
        size: this.size,
        version: this.manifest.version,
        created: this.manifest.created,
        mtime: manifestMtime(this.manifest),
        chunkSize: this.manifest.chunkSize,
        chunks: this.table.count,
        storedChunks: stored,
        endpoint: this.deps.client.describe(),
      },
    };
  }

  /** Chunk `index` into the cache; EIO on failure. Zero chunks need nothing. */
  private async prefetch(index: number): Promise<void> {
    const hash = this.table.hash(index);
    if (!hash) return;
    await this.deps.cache.prefetch(hash, chunkLength(this.manifest, index), this.fetcher(hash)).catch((err: unknown) => this.fail(index, err));
  }

  private fetcher(hash: string): ChunkFetcher {
    // mustExist: the manifest names this chunk, so a 404 is a store glitch worth retrying.
    return (check) => this.deps.client.get(this.uri.bucket, `${this.manifest.chunkPrefix}${hash}`, { check, mustExist: true });
  }

  private readAhead(offset: number, end: number): void {
    this.streak = offset === this.nextSequential ? this.streak + 1 : 0;
    this.nextSequential = end;
    if (this.streak < 2 || end >= this.size) return;
    const cs = this.manifest.chunkSize;
    const first = Math.ceil(end / cs);
    const last = Math.min(this.table.count - 1, Math.floor((end + READ_AHEAD_BYTES - 1) / cs));
    for (let i = first; i <= last; i++) {
      const hash = this.table.hash(i);
      if (!hash || this.deps.cache.has(hash)) continue;
      this.prefetch(i).catch((err: unknown) => this.deps.log.debug({ err, chunk: i }, 'read-ahead failed'));
    }
  }

  private fail(index: number, err: unknown): never {
    const message = (err as Error).message;
    this.deps.log.warn({ base: this.pinnedUri, chunk: index, err: message }, 'object-store read failed');
    if (err instanceof DeviceError) throw err;
    throw new DeviceError('EIO', `${this.pinnedUri}: chunk ${index}: ${message}`);
  }
}
