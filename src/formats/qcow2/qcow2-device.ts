/**
 * Qcow2Device: a qcow2 image as a READ-ONLY BlockDevice (docs/qcow2-format.md).
 *
 *   read(off, buf) ─► Qcow2Map.mapRange ─► data:       pread of the image file (merged runs)
 *                                         zero:       fill
 *                                         backing:    the backing device (zeros past its end)
 *                                         compressed: decode with the device's reused decoder:
 *                                                     a whole cluster straight into the reply;
 *                                                     part of one via the scratch cluster, or the
 *                                                     decompressed-cluster cache from its second
 *                                                     partial read (admit) ─► copy
 *
 * Every piece of a request is fetched concurrently and there is no lock: the image never
 * changes while open (cownbd never writes qcow2), so reads share the caches freely.
 * Writes are impossible by construction (capabilities.writable is false; CheckedDevice
 * answers EPERM before they reach here).
 *
 * Memory is bounded whatever the image size: the L1 table (QEMU caps it at 32 MiB; a
 * 1 TiB image with 64 KiB clusters has 16 KiB), one LRU of L2 slices and one LRU of
 * decompressed clusters, both byte-budgeted (qcow2-lru.ts).
 *
 * Block status follows qemu-nbd over the same image: data clusters are data at depth 1;
 * zero clusters are HOLE|ZERO at depth 1 (allocated here, reading as zeros); unallocated
 * ranges report the backing's status one level deeper, or HOLE|ZERO at depth 0 past the
 * backing's end or without a backing.
 */
import type { FileHandle } from 'node:fs/promises';
import { type BlockDevice, type DeviceCapabilities, DeviceError, EXTENT_HOLE, EXTENT_ZERO, type Extent, type LayerInfo } from '../../block/block-device.js';
import { MAX_EXTENTS_PER_CALL, type FileIo } from '../../block/file-io.js';
import { ClusterDecoder } from './qcow2-decompress.js';
import type { Qcow2Header } from './qcow2-header.js';
import { BoundedLru } from './qcow2-lru.js';
import { Qcow2Map, type Piece } from './qcow2-map.js';

/**
 * Default budget of cached L2 slices: 16 MiB maps 128 GiB of a 64 KiB-cluster image. It is
 * per device, and every overlay of an --overlay-dir fleet opens its own base device, so a
 * fleet's worst case is machines × budget; slices are only cached once touched, and a
 * machine touches the metadata of what it reads (1 GiB read ≈ 128 KiB of entries).
 */
export const DEFAULT_L2_CACHE_BYTES = 16 * 1024 * 1024;
/**
 * Default budget of decompressed clusters, kept only for partial reads (whole-cluster
 * reads bypass it): 64 clusters of 64 KiB, or 2 of 2 MiB.
 */
export const DEFAULT_CLUSTER_CACHE_BYTES = 4 * 1024 * 1024;
/**
 * Block status looks at most this far per call (the caller asks again): 1 GiB, or 2^17
 * clusters when clusters are small (512 B clusters: 2 M L2 entries per GiB).
 */
const STATUS_WINDOW = 1024 * 1024 * 1024;
const STATUS_WINDOW_CLUSTERS = 131072;
/**
 * Compressed-input buffers kept for reuse (each one cluster + 1 KiB). Reads in flight beyond
 * this allocate; the bound keeps a fleet's per-device memory small (docs/qcow2-format.md#memory).
 */
const INPUT_POOL = 8;

export interface Qcow2DeviceParts {
  readonly path: string;
  readonly fh: FileHandle;
  readonly fileLength: number;
  readonly header: Qcow2Header;
  readonly l1: Buffer;
  readonly backing: BlockDevice | undefined;
  readonly backingPath: string | undefined;
  readonly backingFormat: string | undefined;
  readonly io: FileIo;
  readonly l2CacheBytes?: number;
  readonly clusterCacheBytes?: number;
}

export class Qcow2Device implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities = Object.freeze({
    writable: false,
    flush: false,
    fua: false,
    trim: false,
    zero: false,
    fastZero: false,
    blockStatus: true,
    cache: false,
    multiConn: true,
  });
  readonly preferredBlockSize: number;
  readonly map: Qcow2Map;
  private readonly l2Cache: BoundedLru;
  private readonly clusterCache: BoundedLru;
  private readonly decoder: ClusterDecoder;
  /** Buffers for compressed input, reused (a read may wait on the threadpool, so not one). */
  private readonly inputs: Buffer[] = [];
  /** One cluster for partial reads that are not cached (see admit). */
  private scratch: Buffer | undefined;
  /** Clusters read partially once, oldest first (see admit), at most seenOnceMax. */
  private readonly seenOnce = new Set<number>();
  private readonly seenOnceMax: number;

  constructor(private readonly parts: Qcow2DeviceParts) {
    const h = parts.header;
    this.size = h.size;
    this.preferredBlockSize = Math.max(4096, Math.min(h.clusterSize, 65536));
    this.l2Cache = new BoundedLru(parts.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES);
    this.clusterCache = new BoundedLru(Math.max(parts.clusterCacheBytes ?? DEFAULT_CLUSTER_CACHE_BYTES, h.clusterSize));
    this.decoder = new ClusterDecoder(h.compression, h.clusterSize);
    // Remember twice as many clusters as the cache holds: a sequential reader comes back
    // to its cluster within a few requests, a random one rarely within this window.
    this.seenOnceMax = 2 * Math.max(1, Math.floor(this.clusterCache.maxBytes / h.clusterSize));
    this.map = new Qcow2Map(h, parts.l1, { slice: (at, len) => this.l2Cache.get(at, () => this.loadSlice(at, len)) }, parts.path);
  }

  get header(): Qcow2Header {
    return this.parts.header;
  }

  /** Bytes the L2 cache holds now (memory reports and tests). */
  get cachedL2Bytes(): number {
    return this.l2Cache.size;
  }

  /** Bytes of decompressed clusters cached now (tests of the admission policy). */
  get cachedClusterBytes(): number {
    return this.clusterCache.size;
  }

  async read(offset: number, target: Buffer): Promise<void> {
    const pieces = await this.map.mapRange(offset, target.length);
    const jobs: Array<Promise<void>> = [];
    let at = 0;
    let pos = offset;
    for (const p of pieces) {
      const part = target.subarray(at, at + p.length);
      jobs.push(this.readPiece(p, pos, part));
      at += p.length;
      pos += p.length;
    }
    await Promise.all(jobs);
  }

  private async readPiece(p: Piece, guest: number, part: Buffer): Promise<void> {
    switch (p.kind) {
      case 'zero':
        part.fill(0);
        return;
      case 'data':
        // Past the file's end a cluster reads as zeros (QEMU's file layer does the same).
        await this.parts.io.read(this.parts.fh, p.host, part, 0);
        return;
      case 'backing':
        return this.readBacking(guest, part);
      case 'compressed': {
        // A read of the whole cluster (sequential copies) is not cached: keeping it would
        // only push other clusters out. It decodes straight into the reply: no copy, no garbage.
        if (p.within === 0 && p.length === this.parts.header.clusterSize) return this.loadCompressed(p, part);
        const cached = this.clusterCache.peek(p.cluster);
        if (cached) {
          cached.copy(part, 0, p.within, p.within + p.length);
          return;
        }
        // First partial read of a cluster: decode into the scratch cluster and copy at once
        // (nothing is kept, so random reads make no garbage). A second partial read soon
        // after (sequential small reads) caches it: qcow2-format.md "Performance".
        if (this.decoder.synchronous && !this.admit(p.cluster)) {
          return this.withInput(p, (input, where) => {
            const scratch = (this.scratch ??= Buffer.allocUnsafeSlow(this.parts.header.clusterSize));
            this.decoder.decodeNow(input, scratch, where);
            scratch.copy(part, 0, p.within, p.within + p.length);
          });
        }
        const cluster = await this.clusterCache.get(p.cluster, async () => {
          const buf = Buffer.allocUnsafeSlow(this.parts.header.clusterSize);
          await this.loadCompressed(p, buf);
          return buf;
        });
        cluster.copy(part, 0, p.within, p.within + p.length);
        return;
      }
    }
  }

  private async readBacking(guest: number, part: Buffer): Promise<void> {
    const b = this.parts.backing;
    const inBacking = b ? Math.max(0, Math.min(part.length, b.size - guest)) : 0;
    if (inBacking > 0) await b!.read(guest, part.subarray(0, inBacking));
    if (inBacking < part.length) part.fill(0, inBacking);
  }

  private async loadSlice(at: number, length: number): Promise<Buffer> {
    if (at + length > this.parts.fileLength) {
      throw new DeviceError('EIO', `${this.parts.path}: corrupt image: L2 table slice at ${at} lies past the end of the file (${this.parts.fileLength} bytes)`);
    }
    const buf = Buffer.allocUnsafe(length);
    await this.parts.io.read(this.parts.fh, at, buf, length);
    return buf;
  }

  /** Read and decode the compressed cluster `p` into `out` (one cluster). */
  private loadCompressed(p: CompressedPiece, out: Buffer): Promise<void> {
    return this.withInput(p, (input, where) => this.decoder.decode(input, out, where));
  }

  /**
   * Read the compressed bytes of `p` into a pooled buffer and hand them to `use` (run as
   * soon as they are read; a synchronous `use` runs without yielding in between).
   */
  private async withInput(p: CompressedPiece, use: (input: Buffer, where: string) => void | Promise<void>): Promise<void> {
    const where = `${this.parts.path}: guest offset ${p.cluster} (compressed at ${p.host})`;
    // The last compressed cluster may end inside the file's final sector: read what exists.
    const len = Math.max(0, Math.min(p.hostLength, this.parts.fileLength - p.host));
    if (len === 0) throw new DeviceError('EIO', `${where}: compressed data lies past the end of the file (${this.parts.fileLength} bytes)`);
    const pooled = this.inputs.pop() ?? Buffer.allocUnsafeSlow(Math.max(len, this.parts.header.clusterSize + 1024));
    const input = pooled.length >= len ? pooled : Buffer.allocUnsafeSlow(len);
    try {
      // The page-cache fast path (FileIo.read: RWF_NOWAIT inline, threadpool on a miss): a
      // compressed cluster is a few KiB, and the threadpool round trip cost more than the
      // decode (docs/qcow2-format.md "Performance").
      await this.parts.io.read(this.parts.fh, p.host, input.subarray(0, len), len);
      await use(input.subarray(0, len), where);
    } finally {
      if (this.inputs.length < INPUT_POOL) this.inputs.push(input);
    }
  }

  /**
   * Admission to the decompressed-cluster cache: true when `cluster` was read partially
   * recently (then it is cached), false the first time (it is remembered, not cached).
   */
  private admit(cluster: number): boolean {
    if (this.seenOnce.delete(cluster)) return true;
    this.seenOnce.add(cluster);
    if (this.seenOnce.size > this.seenOnceMax) this.seenOnce.delete(this.seenOnce.values().next().value!);
    return false;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const window = Math.min(STATUS_WINDOW, this.parts.header.clusterSize * STATUS_WINDOW_CLUSTERS);
    const pieces = await this.map.mapRange(offset, Math.min(length, window));
    const out: Extent[] = [];
    let pos = offset;
    for (const p of pieces) {
      if (out.length >= MAX_EXTENTS_PER_CALL) break;
      if (p.kind === 'backing') {
        for (const e of await this.backingStatus(pos, p.length)) add(out, e);
      } else {
        add(out, { length: p.length, flags: p.kind === 'zero' ? EXTENT_HOLE | EXTENT_ZERO : 0, depth: 1 });
      }
      pos += p.length;
    }
    return out;
  }

  /** Status of a range this layer does not hold: the backing's, one level deeper. */
  private async backingStatus(offset: number, length: number): Promise<Extent[]> {
    const b = this.parts.backing;
    const inBacking = b ? Math.max(0, Math.min(length, b.size - offset)) : 0;
    const out: Extent[] = [];
    let pos = offset;
    while (pos < offset + inBacking) {
      const got = await b!.blockStatus(pos, offset + inBacking - pos);
      if (got.length === 0) throw new DeviceError('EIO', `${this.parts.path}: backing block status at ${pos} returned nothing`);
      for (const e of got) {
        // Depth 0 below (no layer holds it) stays 0: qemu:allocation-depth counts holders.
        out.push({ length: e.length, flags: e.flags, depth: e.depth === 0 ? 0 : e.depth + 1 });
        pos += e.length;
      }
    }
    if (inBacking < length) out.push({ length: length - inBacking, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 0 });
    return out;
  }

  async write(): Promise<void> {
    throw new DeviceError('EPERM', `${this.parts.path}: qcow2 images are read-only in cownbd`);
  }
  async flush(): Promise<void> {}
  async trim(): Promise<void> {
    throw new DeviceError('EPERM', `${this.parts.path}: qcow2 images are read-only in cownbd`);
  }
  async writeZeroes(): Promise<void> {
    throw new DeviceError('EPERM', `${this.parts.path}: qcow2 images are read-only in cownbd`);
  }
  async cache(): Promise<void> {}

  async close(): Promise<void> {
    this.decoder.drop();
    this.inputs.length = 0;
    this.seenOnce.clear();
    this.scratch = undefined;
    this.l2Cache.clear();
    this.clusterCache.clear();
    try {
      await this.parts.backing?.close();
    } finally {
      await this.parts.fh.close();
    }
  }

  describe(): LayerInfo {
    const h = this.parts.header;
    return {
      format: 'qcow2',
      path: this.parts.path,
      detail: {
        size: this.size,
        version: h.version,
        clusterSize: h.clusterSize,
        extendedL2: h.extendedL2,
        compression: h.compression,
        snapshots: h.nbSnapshots,
        dirty: h.dirty,
        ...(this.parts.backingPath !== undefined ? { backingFile: this.parts.backingPath, backingFormat: this.parts.backingFormat } : {}),
      },
      backing: this.parts.backing?.describe(),
    };
  }
}

type CompressedPiece = Extract<Piece, { kind: 'compressed' }>;

/** Append `e`, merging it into the previous extent when flags and depth match. */
function add(out: Extent[], e: Extent): void {
  const last = out[out.length - 1];
  if (last && last.flags === e.flags && last.depth === e.depth) out[out.length - 1] = { ...last, length: last.length + e.length };
  else out.push(e);
}
