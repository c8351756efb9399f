/**
 * Shipping one machine's writes to the object store (docs/fleet.md, "Shipping"):
 *
 *   markDirty(offset, length)   after every completed write/trim/zero (the wrapping device)
 *   await ship()                one ship that *starts after the call*: every chunk marked
 *                               before it is in the store and the head names it when it resolves
 *
 * A ship: swap the dirty set for an empty one, read each dirty chunk through the machine's
 * device (the whole disk view), store it by content hash unless the store has it (the shared
 * chunk store: equal data is one object), write the new complete manifest version under
 * PREFIX/NAME/manifests/, then advance the head (fenced: machine-head.ts). Chunks before
 * manifest before head. A failed ship puts its chunks back in the dirty set.
 *
 * Why marks come *after* a write completes: a chunk marked before its write lands could be
 * read by a ship in between, shipped with the old bytes and no longer be dirty. Marked
 * after, any ship that misses the new bytes leaves the mark for the next one.
 *
 * Ships run one at a time; callers that arrive while one runs share the next one.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { BlockDevice } from '../block/block-device.js';
import type { Logger } from '../logging.js';
import { sha256Hex } from '../objectstore/chunk-cache.js';
import { chunkLength, encodeManifest, newVersionId, type Manifest } from '../objectstore/manifest.js';
import type { StoreClient } from '../objectstore/store-client.js';
import type { MachineKeys } from './fleet-keys.js';
import type { MachineHead } from './machine-head.js';

export interface ShipperOptions {
  readonly client: StoreClient;
  readonly keys: MachineKeys;
  readonly head: MachineHead;
  /** The machine's disk as it serves it (overlay over the shipped state). */
  readonly device: BlockDevice;
  /** The shipped state the device starts from: the head's version, or the base's manifest. */
  readonly start: Manifest;
  /** Parallel chunk uploads (default 4). */
  readonly concurrency?: number;
  readonly log?: Logger;
  readonly now?: () => Date;
}

export interface ShipResult {
  /** The version the head names now (unchanged when nothing was dirty). */
  readonly version: string | null;
  readonly chunks: number;
  readonly uploadedChunks: number;
  readonly uploadedBytes: number;
}

export class Shipper {
  private chunks: (string | null)[];
  private dirty = new Set<number>();
  /** Monotonic time of the oldest mark not yet shipped (undefined: nothing dirty). */
  private dirtySince: number | undefined;
  private running: Promise<ShipResult> | undefined;
  private queued: Promise<ShipResult> | undefined;
  private lastVersion: string | null;
  /** Wall-clock time of the last successful ship (for `ctl machines`). */
  lastShipAt: Date | undefined;
  readonly stats = { ships: 0, failedShips: 0, uploadedChunks: 0, uploadedBytes: 0 };

  constructor(private readonly o: ShipperOptions) {
    const m = o.start;
    if (m.virtualSize !== o.device.size) throw new Error(`machine ${o.keys.machine}: device size ${o.device.size} differs from its shipped state's ${m.virtualSize}`);
    this.chunks = [...m.chunks];
    this.lastVersion = o.head.state.version;
  }

  get chunkSize(): number {
    return this.o.start.chunkSize;
  }

  markDirty(offset: number, length: number): void {
    if (length <= 0) return;
    const cs = this.o.start.chunkSize;
    for (let i = Math.floor(offset / cs); i <= Math.floor((offset + length - 1) / cs); i++) this.dirty.add(i);
    this.dirtySince ??= performance.now();
  }

  /** Ship lag: bytes of chunks written and not yet in the store, and the age of the oldest. */
  lag(): { bytes: number; seconds: number } {
    const bytes = [...this.dirty].reduce((sum, i) => sum + chunkLength(this.o.start, i), 0);
    return { bytes, seconds: this.dirtySince === undefined ? 0 : (performance.now() - this.dirtySince) / 1000 };
  }

  /** One ship that starts after this call (shared by every caller until it starts). */
  ship(): Promise<ShipResult> {
    if (this.queued) return this.queued;
    const after = this.running ?? Promise.resolve();
    const p: Promise<ShipResult> = after
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        this.running = p;
        return this.shipOnce();
      })
      .finally(() => {
        if (this.running === p) this.running = undefined;
      });
    this.queued = p;
    return p;
  }

  private async shipOnce(): Promise<ShipResult> {
    const indexes = [...this.dirty].sort((a, b) => a - b);
    if (indexes.length === 0) return { version: this.lastVersion, chunks: 0, uploadedChunks: 0, uploadedBytes: 0 };
    this.dirty = new Set();
    const since = this.dirtySince;
    this.dirtySince = undefined;
    try {
      const result = await this.send(indexes);
      this.stats.ships++;
      return result;
    } catch (err) {
      for (const i of indexes) this.dirty.add(i);
      const oldest = Math.min(since ?? Infinity, this.dirtySince ?? Infinity);
      this.dirtySince = Number.isFinite(oldest) ? oldest : undefined;
      this.stats.failedShips++;
      throw err;
    }
  }

  private async send(indexes: number[]): Promise<ShipResult> {
    const { client, keys, device, start } = this.o;
    const next = [...this.chunks];
    let uploadedChunks = 0;
    let uploadedBytes = 0;
    let pos = 0;
    const worker = async (): Promise<void> => {
      const buf = Buffer.allocUnsafe(start.chunkSize);
      while (pos < indexes.length) {
        const i = indexes[pos++]!;
        const data = buf.subarray(0, chunkLength(start, i));
        await device.read(i * start.chunkSize, data);
        if (isZero(data)) {
          next[i] = null;
          continue;
        }
        const hash = sha256Hex(data);
        const key = `${start.chunkPrefix}${hash}`;
        // HEAD first: chunks shared with the base or other machines are never sent again.
        if ((await client.size(keys.bucket, key)) !== data.length) {
          await client.put(keys.bucket, key, data, 'application/octet-stream', hash);
          uploadedChunks++;
          uploadedBytes += data.length;
        }
        next[i] = hash;
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(this.o.concurrency ?? 4, indexes.length)) }, worker));
    const now = (this.o.now ?? (() => new Date()))();
    const version = newVersionId(now, randomBytes(4));
    const manifest: Manifest = { ...start, version, created: now.toISOString(), source: `machine ${keys.machine}`, chunks: next };
    await client.put(keys.bucket, keys.manifest(version), encodeManifest(manifest), 'application/json');
    await this.o.head.advance(version);
    this.chunks = next;
    this.lastVersion = version;
    this.lastShipAt = now;
    this.stats.uploadedChunks += uploadedChunks;
    this.stats.uploadedBytes += uploadedBytes;
    this.o.log?.debug({ machine: keys.machine, version, chunks: indexes.length, uploadedChunks }, 'machine shipped');
    return { version, chunks: indexes.length, uploadedChunks, uploadedBytes };
  }
}

function isZero(data: Buffer): boolean {
  // Stops at the first non-zero byte: a written chunk is rarely zero for long.
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) return false;
  return true;
}
