/**
 * ChunkCache: the local, bounded, persistent cache of verified chunks, shared by every
 * object-store device of the process (one instance, created by the CLI, passed in).
 *
 *   DIR/chunks/<sha256>   one file per chunk, named by its hash (content addressed: chunks
 *                         of any image, version or bucket share one entry)
 *   DIR/tmp/              files being written; left-overs of dead writers removed at start-up
 *
 * Rules:
 *   - Verified before use: a chunk fetched from the store is hashed before anyone reads it,
 *     inside the GET's attempt (a mismatch is retried like a network fault, store-client.ts);
 *     when every attempt fails it is EIO for that read, and nothing is cached. A chunk
 *     file found on disk is hashed on its first use by this process (so a torn or tampered
 *     cache file is detected, dropped and fetched again — never served).
 *   - Crash safety: files are written under tmp/ and renamed into chunks/, so a chunk file
 *     is either complete or absent; no fsync is needed because of the rule above.
 *   - Heals: a verified file is checked (fstat: inode, size, mtime, link count — one cheap
 *     syscall per read) before each read; if it changed since it was verified it is hashed
 *     again (and dropped and fetched again if wrong); a deleted file or directory (rm -rf,
 *     `cache clear`) is noticed, the directories are made again and the chunk is re-stored;
 *     a failed write removes its temporary file; on ENOSPC the oldest chunks make room.
 *   - Free-space floor: a chunk is stored only if the file system keeps `minFreeBytes` free
 *     afterwards, evicting old chunks when that is enough; otherwise it is served from
 *     memory and not kept.
 *   - Single flight: concurrent reads of one missing chunk share one fetch; the fetched
 *     buffer serves readers until its file is in place.
 *   - LRU by bytes: `maxBytes` bounds the sum of chunk files. Use order survives restarts
 *     through the files' mtime (refreshed at most once a minute per chunk). A chunk bigger
 *     than the whole cache is served from memory and not kept.
 *   - Open descriptors are reused (most reads are one pread) and bounded by MAX_OPEN_FDS;
 *     an evicted file is unlinked at once and its descriptor closed when no read holds it.
 */
import { createHash } from 'node:crypto';
import { fstatSync } from 'node:fs';
import { mkdir, open, stat, statfs, unlink, utimes, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { DeviceError } from '../block/block-device.js';
import { FileIo } from '../block/file-io.js';
import type { Logger } from '../logging.js';
import { readWhole, removeStaleTemp, sameFile, scanChunkFiles, writeChunkFile, type Stamp } from './cache-files.js';

export { clearCacheDir, inspectCacheDir } from './cache-files.js';

const MAX_OPEN_FDS = 1024;
const TOUCH_INTERVAL_MS = 60_000;

export interface ChunkCacheOptions {
  readonly dir: string;
  readonly maxBytes: number;
  /** Keep at least this many bytes free on the cache's file system (0: no floor). */
  readonly minFreeBytes?: number;
  readonly log: Logger;
  /** Reads of cache files go through the project's I/O fast paths (page-cache reads without a thread hop). */
  readonly io?: FileIo;
}

export interface CacheStats {
  entries: number;
  bytes: number;
  maxBytes: number;
  hits: number;
  misses: number;
  fetches: number;
  verifyFailures: number;
  /** Chunks not kept because of the free-space floor or a full disk. */
  notStored: number;
}


interface Entry {
  readonly hash: string;
  readonly size: number;
  verified: boolean;
  stamp: Stamp | undefined;
  fh: FileHandle | undefined;
  opening: Promise<FileHandle> | undefined;
  pins: number;
  evicted: boolean;
  touchedAt: number;
}

/**
 * Fetches a chunk's bytes from the store. `check` returns what is wrong with a body (or
 * undefined): the fetcher runs it on every attempt so that a bad body is retried.
 */
export type ChunkFetcher = (check: (data: Buffer) => string | undefined) => Promise<Buffer>;

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Signals "the cached file was unusable; fetch again". */
class StaleEntry extends Error {}

export class ChunkCache {
  private readonly entries = new Map<string, Entry>();
  private readonly fdOrder = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private openFds = 0;
  private bytes = 0;
  /** Bytes of chunk files being written right now (the free-space floor counts them). */
  private writing = 0;
  private counters = { hits: 0, misses: 0, fetches: 0, verifyFailures: 0, notStored: 0 };

  private constructor(
    readonly dir: string,
    readonly maxBytes: number,
    private readonly minFreeBytes: number,
    private readonly log: Logger,
    private readonly io: FileIo,
  ) {}

  static async open(o: ChunkCacheOptions): Promise<ChunkCache> {
    const cache = new ChunkCache(path.resolve(o.dir), o.maxBytes, o.minFreeBytes ?? 0, o.log, o.io ?? new FileIo());
    await cache.load();
    return cache;
  }

  /** Copy bytes [offset, offset + target.length) of chunk `hash` into target. */
  async read(hash: string, length: number, offset: number, target: Buffer, fetch: ChunkFetcher): Promise<void> {
    const pending = this.inflight.get(hash);
    if (pending) {
      (await pending).copy(target, 0, offset, offset + target.length);
      return;
    }
    const entry = this.entries.get(hash);
    if (entry) {
      try {
        await this.readEntry(entry, offset, target);
        this.counters.hits++;
        return;
      } catch (err) {
        if (!(err instanceof StaleEntry)) throw err;
      }
    }
    this.counters.misses++;
    const data = await this.fetchOnce(hash, length, fetch);
    data.copy(target, 0, offset, offset + target.length);
  }

  /** Make sure the chunk is cached (NBD_CMD_CACHE, read-ahead). */
  async prefetch(hash: string, length: number, fetch: ChunkFetcher): Promise<void> {
    if (this.entries.has(hash) || this.inflight.has(hash)) return;
    await this.fetchOnce(hash, length, fetch);
  }

  has(hash: string): boolean {
    return this.entries.has(hash);
  }

  stats(): CacheStats {
    return { entries: this.entries.size, bytes: this.bytes, maxBytes: this.maxBytes, ...this.counters };
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()]);
    for (const e of this.entries.values()) this.closeFd(e);
  }

  private file(hash: string): string {
    return path.join(this.dir, 'chunks', hash);
  }

  private async makeDirs(): Promise<void> {
    await mkdir(path.join(this.dir, 'chunks'), { recursive: true });
    await mkdir(path.join(this.dir, 'tmp'), { recursive: true });
  }

  private async load(): Promise<void> {
    await removeStaleTemp(this.dir); // not tmp/ itself: another process may be writing there now
    await this.makeDirs();
    for (const f of await scanChunkFiles(this.dir)) this.insert(f.hash, f.size, false, f.mtime);
    this.evict();
    this.log.info({ cacheDir: this.dir, chunks: this.entries.size, bytes: this.bytes, maxBytes: this.maxBytes }, 'chunk cache opened');
  }

  private insert(hash: string, size: number, verified: boolean, touchedAt: number): void {
    this.entries.set(hash, { hash, size, verified, stamp: undefined, fh: undefined, opening: undefined, pins: 0, evicted: false, touchedAt });
    this.bytes += size;
  }

  private async readEntry(entry: Entry, offset: number, target: Buffer): Promise<void> {
    entry.pins++;
    try {
      this.entries.delete(entry.hash); // LRU: move to the young end
      this.entries.set(entry.hash, entry);
      const fh = await this.handleOf(entry);
      if (entry.verified && !sameFile(entry.stamp, fh)) {
        this.log.warn({ chunk: entry.hash, file: this.file(entry.hash) }, 'cached chunk file changed since it was verified: verifying it again');
        entry.verified = false;
      }
      if (!entry.verified) {
        const data = await this.verifyFile(entry, fh);
        data.copy(target, 0, offset, offset + target.length);
      } else {
        await this.io.read(fh, offset, target, target.length);
      }
      this.touch(entry);
    } catch (err) {
      if (err instanceof StaleEntry) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      this.log.warn({ chunk: entry.hash, code }, 'cached chunk unreadable: dropped, fetching again');
      this.drop(entry);
      throw new StaleEntry();
    } finally {
      entry.pins--;
      if (entry.evicted && entry.pins === 0) this.closeFd(entry);
    }
  }

  /** Hash the whole file behind `fh`; remember what it looked like. A bad or deleted file is dropped (StaleEntry). */
  private async verifyFile(entry: Entry, fh: FileHandle): Promise<Buffer> {
    const st = fstatSync(fh.fd);
    const data = st.nlink > 0 && st.size === entry.size ? await readWhole(fh, entry.size) : undefined;
    if (!data || sha256Hex(data) !== entry.hash) {
      this.log.warn({ chunk: entry.hash, file: this.file(entry.hash) }, 'cached chunk file is damaged or gone: dropped, fetching again');
      this.drop(entry);
      throw new StaleEntry();
    }
    entry.verified = true;
    entry.stamp = { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
    return data;
  }

  private fetchOnce(hash: string, length: number, fetch: ChunkFetcher): Promise<Buffer> {
    let p = this.inflight.get(hash);
    if (p) return p;
    this.counters.fetches++;
    // The check runs inside each GET attempt, so a wrong body is fetched again, not failed;
    // a fetcher that did not run it (or returned other bytes) is checked here.
    let checked: Buffer | undefined;
    const check = (data: Buffer): string | undefined => {
      if (data.length !== length || sha256Hex(data) !== hash) {
        this.counters.verifyFailures++;
        this.log.warn({ chunk: hash, expectedLength: length, gotLength: data.length }, 'chunk from the object store does not match its SHA-256: refusing it');
        return `chunk ${hash} does not match its SHA-256 (${data.length} bytes, expected ${length})`;
      }
      checked = data;
      return undefined;
    };
    p = fetch(check).then((data) => {
      if (data !== checked && check(data) !== undefined) {
        throw new DeviceError('EIO', `chunk ${hash} from the object store failed verification`);
      }
      return data;
    });
    this.inflight.set(hash, p);
    p.then(
      (data) =>
        this.store(hash, data)
          .catch((err: unknown) => this.log.warn({ chunk: hash, err }, 'could not write chunk to the cache (served from memory)'))
          .finally(() => this.inflight.delete(hash)),
      () => this.inflight.delete(hash),
    );
    return p;
  }

  private async store(hash: string, data: Buffer): Promise<void> {
    if (data.length > this.maxBytes || this.entries.has(hash)) return;
    this.writing += data.length; // concurrent stores must not each see the same free space
    try {
      await this.storeCounted(hash, data);
    } finally {
      this.writing -= data.length;
    }
  }

  private async storeCounted(hash: string, data: Buffer): Promise<void> {
    if (!(await this.roomFor())) {
      this.counters.notStored++;
      return;
    }
    let stamp: Stamp;
    try {
      stamp = await writeChunkFile(this.dir, hash, data);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        // The cache directory (or a part of it) was deleted under us: make it again.
        this.log.warn({ cacheDir: this.dir }, 'cache directory is gone: creating it again');
        await this.makeDirs();
        stamp = await writeChunkFile(this.dir, hash, data);
      } else {
        // A full disk: drop older chunks, retry once (else concurrent writes may each drop one, keep none).
        const full = (code === 'ENOSPC' || code === 'EDQUOT') && this.makeRoomAfterFullDisk(data.length) > 0;
        stamp = await (full ? writeChunkFile(this.dir, hash, data) : Promise.reject(err)).catch((e: unknown) => {
          this.counters.notStored++;
          throw e;
        });
      }
    }
    if (this.entries.has(hash)) return;
    this.insert(hash, data.length, true, Date.now());
    this.entries.get(hash)!.stamp = stamp;
    this.evict();
  }

  /**
   * The free-space floor: true if the chunks being written keep `minFreeBytes` free, evicting old chunks
   * when that is enough (never the whole cache for a disk that others filled).
   */
  private async roomFor(): Promise<boolean> {
    if (this.minFreeBytes <= 0) return true;
    const fs = await statfs(this.dir).catch(() => undefined);
    if (!fs) return true; // cannot tell: the write itself will say
    // `writing` includes this chunk and every other one being written now.
    const need = this.minFreeBytes + this.writing - fs.bavail * fs.bsize;
    if (need <= 0) return true;
    if (need > this.bytes) {
      this.log.debug({ cacheDir: this.dir, need }, 'free-space floor: chunk not kept');
      return false;
    }
    this.dropOldest(need);
    return true;
  }

  /** ENOSPC: the oldest chunks make room for the one that failed (retried once); returns bytes freed. */
  private makeRoomAfterFullDisk(bytes: number): number {
    const freed = this.dropOldest(bytes);
    this.log.warn({ cacheDir: this.dir, freed }, 'cache file system is full: dropped the oldest chunks to make room');
    return freed;
  }

  /** Drop least recently used chunks until `bytes` are freed (or none is left); returns bytes freed. */
  private dropOldest(bytes: number): number {
    let freed = 0;
    for (const entry of this.entries.values()) {
      if (freed >= bytes) break;
      freed += entry.size;
      this.drop(entry);
    }
    return freed;
  }

  private evict(): void {
    for (const entry of this.entries.values()) {
      if (this.bytes <= this.maxBytes) break;
      this.drop(entry);
    }
  }

  /** Forget an entry and delete its file (the descriptor closes when the last read ends). */
  private drop(entry: Entry): void {
    if (entry.evicted) return;
    entry.evicted = true;
    if (this.entries.get(entry.hash) === entry) {
      this.entries.delete(entry.hash);
      this.bytes -= entry.size;
      unlink(this.file(entry.hash)).catch(() => {});
    }
    if (entry.pins === 0) this.closeFd(entry);
  }

  private async handleOf(entry: Entry): Promise<FileHandle> {
    if (entry.fh !== undefined) return entry.fh;
    entry.opening ??= open(this.file(entry.hash), 'r').finally(() => {
      entry.opening = undefined;
    });
    const fh = await entry.opening;
    if (entry.fh === undefined) {
      entry.fh = fh;
      this.openFds++;
      this.fdOrder.set(entry.hash, entry);
      this.trimFds();
    } else if (entry.fh !== fh) {
      fh.close().catch(() => {});
    }
    return entry.fh;
  }

  private trimFds(): void {
    for (const e of this.fdOrder.values()) {
      if (this.openFds <= MAX_OPEN_FDS) break;
      if (e.pins === 0) this.closeFd(e);
    }
  }

  private closeFd(entry: Entry): void {
    if (entry.fh === undefined) return;
    entry.fh.close().catch(() => {});
    entry.fh = undefined;
    this.openFds--;
    this.fdOrder.delete(entry.hash);
  }

  private touch(entry: Entry): void {
    const now = Date.now();
    if (now - entry.touchedAt < TOUCH_INTERVAL_MS) return;
    entry.touchedAt = now;
    const t = new Date(now);
    const file = this.file(entry.hash);
    // The mtime is the LRU order across restarts; our own touch must not look like a change.
    utimes(file, t, t)
      .then(() => stat(file))
      .then((st) => {
        if (entry.stamp && st.ino === entry.stamp.ino && st.size === entry.stamp.size) entry.stamp = { ...entry.stamp, mtimeMs: st.mtimeMs };
      })
      .catch(() => {});
  }
}
