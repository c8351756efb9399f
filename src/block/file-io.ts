/**
 * Positional file I/O: the helpers every module that reads or writes a file at an offset
 * uses (formats' headers and bitmaps, tools' repairs, flattening), and FileIo, the fast
 * data path the block devices use. Not a device: no sizes, no capabilities, no formats.
 *
 *   readFully / writeFully   plain pread/pwrite loops on the threadpool (metadata, tools)
 *   FileIo.read / .write     the same contract with the IoPolicy's fast paths (guest data):
 *                            RWF_NOWAIT page-cache reads, synchronous small writes, and
 *                            one native batch per event-loop turn for the other writes
 *   sparseExtents            data/hole runs of a file range (SEEK_DATA/SEEK_HOLE)
 *
 * FileIo owns the fast paths' state (which files refused RWF_NOWAIT, one write batcher per
 * file, the synchronous-write cooldown); one instance per IoPolicy, created by whoever
 * built the policy, so that state is never module-global.
 */
import fs from 'node:fs';
import os from 'node:os';
import type { FileHandle } from 'node:fs/promises';
import { EXTENT_HOLE, EXTENT_ZERO, type Extent } from './block-device.js';
import { defaultIoPolicy, type IoPolicy } from './io-policy.js';
import type { NativeFs } from './native-fs.js';
import type { OpenGuard } from './open-guard.js';

/** Upper bound on extents returned by one blockStatus call (the caller asks again). */
export const MAX_EXTENTS_PER_CALL = 1024;

/*
 * pread/pwrite through the callback fs API on the raw fd: measured ~2x faster than
 * FileHandle.read/write on Node 24 (FileHandle adds per-call promise bookkeeping and
 * close-tracking). The FileHandle still owns the fd and closes it.
 */
function pread(fd: number, buffer: Buffer, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buffer, at, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function pwrite(fd: number, buffer: Buffer, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buffer, at, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

/**
 * End of file came before `required` bytes: the file is shorter than its known size (a
 * base truncated while served). Never zero-filled: those zeros would be served, and
 * copied into overlays by partial writes, as if they were data. code EIO.
 */
export class ShortReadError extends Error {
  readonly code = 'EIO';
  constructor(
    readonly offset: number,
    readonly got: number,
    readonly required: number,
  ) {
    super(`EIO: short read: end of file at byte ${offset + got}, inside the known size (needed ${required} bytes from offset ${offset})`);
  }
}

/** pread from `done` until `target` is full; bytes past EOF read as zeros, unless within `required`. */
async function preadFrom(fd: number, offset: number, target: Buffer, done: number, required: number): Promise<void> {
  while (done < target.length) {
    const bytesRead = await pread(fd, target, done, target.length - done, offset + done);
    if (bytesRead === 0) {
      if (done < required) throw new ShortReadError(offset, done, required);
      target.fill(0, done);
      return;
    }
    done += bytesRead;
  }
}

/**
 * pread until `target` is full; bytes past EOF read as zeros — except the first
 * `required` bytes, which the caller knows exist (ShortReadError if they do not).
 */
export function readFully(fh: FileHandle, offset: number, target: Buffer, required = 0): Promise<void> {
  return preadFrom(fh.fd, offset, target, 0, required);
}

/** pwrite until all of `data` is written. */
export async function writeFully(fh: FileHandle, offset: number, data: Buffer): Promise<void> {
  let done = 0;
  while (done < data.length) done += await pwrite(fh.fd, data, done, data.length - done, offset + done);
}

/**
 * Data/hole extents of a file range from SEEK_DATA/SEEK_HOLE. Holes read as zeros.
 * `depth` is the allocation depth to report for both (a raw file has no backing, so
 * even its holes belong to this layer, as in qemu).
 */
export async function sparseExtents(native: NativeFs, fd: number, offset: number, length: number, depth: number, sync = false): Promise<Extent[]> {
  const end = offset + length;
  const extents: Extent[] = [];
  let pos = offset;
  while (pos < end && extents.length < MAX_EXTENTS_PER_CALL) {
    const data = sync ? native.seekDataSync!(fd, pos) : await native.seekData(fd, pos);
    if (data === -1 || data >= end) {
      extents.push({ length: end - pos, flags: EXTENT_HOLE | EXTENT_ZERO, depth });
      break;
    }
    if (data > pos) {
      extents.push({ length: data - pos, flags: EXTENT_HOLE | EXTENT_ZERO, depth });
      pos = data;
    }
    const hole = sync ? native.seekHoleSync!(fd, pos) : await native.seekHole(fd, pos);
    const dataEnd = hole === -1 ? end : Math.min(hole, end);
    extents.push({ length: dataEnd - pos, flags: 0, depth });
    pos = dataEnd;
  }
  return extents;
}

/** Above this, a synchronous memcpy would hold the event loop too long: always async. */
const NOWAIT_MAX = 4 * 1024 * 1024;
/**
 * Reads above this go to the threadpool while the server is busy (FileIo.setQuietProbe).
 * Copying there overlaps with the event loop's socket sends, so the two cores share the two
 * copies of a large read (page cache → buffer → socket): measured seqread 1M QD8 ~2.0 →
 * ~2.6 GiB/s and nbdcopy → null ~1.3 → ~1.7 GiB/s. A lone request (a synchronous client,
 * nbdcopy --synchronous) has nothing to overlap with and only pays the hop's latency, so it
 * reads inline. (Deciding by "no other read in the threadpool" instead measured worse at
 * QD8: completions arrive one by one, so that was often true.)
 */
const INLINE_READ_MAX = 128 * 1024;
/** Writes above this go alone (their memcpy dominates anyway). */
const BATCH_MAX = 4 * 1024 * 1024;
const SYNC_WRITE_MAX = 64 * 1024;
const SYNC_WRITE_SLOW_NS = 1_000_000n;
const SYNC_WRITE_COOLDOWN_MS = 1_000;

const ERRNO_NAMES = new Map<number, string>(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));

function errnoError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = ERRNO_NAMES.get(errno) ?? 'EIO';
  return Object.assign(new Error(`${code}: ${syscall} failed (errno ${errno})`), { code, errno: -errno, syscall });
}

export class FileIo {
  readonly native: NativeFs | undefined;
  private readonly nowait: boolean;
  private readonly batching: boolean;
  private readonly syncSeeks: boolean;
  /** True while large reads may run inline (see INLINE_READ_MAX); tools: always. */
  private quiet: () => boolean = () => true;
  private readonly nowaitUnsupported = new WeakSet<FileHandle>();
  /** One batcher per open file (keyed by the handle; collected with it). */
  private readonly batchers = new WeakMap<FileHandle, WriteBatcher>();
  private syncWritesPausedUntil = 0;

  constructor(
    readonly policy: IoPolicy = defaultIoPolicy(),
    /** The server's open-file registry and --allow-path (open-guard.ts); none for tools. */
    readonly guard?: OpenGuard,
  ) {
    this.native = policy.native;
    this.nowait = policy.nowaitReads && typeof policy.native?.preadNoWait === 'function';
    this.batching = policy.batchWrites && typeof policy.native?.pwriteBatch === 'function';
    this.syncSeeks = policy.syncSeeks === true && typeof policy.native?.seekDataSync === 'function';
  }

  /**
   * The NBD server says when it is quiet (one request in flight): only then do reads above
   * INLINE_READ_MAX run inline. With several servers on one FileIo (tests), the last wins.
   */
  setQuietProbe(probe: () => boolean): void {
    this.quiet = probe;
  }

  /** Data/hole extents of a file range (sparseExtents), with the policy's kind of seeks. Needs `native`. */
  extents(fd: number, offset: number, length: number, depth: number): Promise<Extent[]> {
    return sparseExtents(this.native!, fd, offset, length, depth, this.syncSeeks);
  }

  /**
   * readFully with a page-cache fast path: try preadv2(RWF_NOWAIT) synchronously first; it
   * never sleeps on I/O (a cache miss answers -1 and we go to the threadpool). Saves the
   * threadpool round trip that dominated small-read latency (4 KiB random reads: ~3.5x).
   * Turned off per file when its filesystem does not support RWF_NOWAIT (-2, e.g. tmpfs).
   */
  read(fh: FileHandle, offset: number, target: Buffer, required = 0): Promise<void> {
    let done = 0;
    const inline = target.length <= INLINE_READ_MAX || (target.length <= NOWAIT_MAX && this.quiet());
    if (this.nowait && inline && !this.nowaitUnsupported.has(fh)) {
      const fd = fh.fd;
      while (done < target.length) {
        const n = this.native!.preadNoWait!(fd, target.subarray(done), offset + done);
        if (n > 0) {
          done += n;
          continue;
        }
        if (n === 0) {
          if (done < required) return Promise.reject(new ShortReadError(offset, done, required));
          target.fill(0, done);
          return Promise.resolve();
        }
        if (n === -2) this.nowaitUnsupported.add(fh);
        break;
      }
    }
    return preadFrom(fh.fd, offset, target, done, required);
  }

  /**
   * Write now, synchronously, if the small-write fast path allows it (see trySyncWrite):
   * true when `data` is in the page cache on return. false: nothing was written, use write().
   * Lets a caller finish a request in the same turn without any promise (cow's 4 KiB writes).
   */
  writeNow(fh: FileHandle, offset: number, data: Buffer): boolean {
    return this.trySyncWrite(fh.fd, offset, data);
  }

  /** writeFully through the fast paths (see trySyncWrite and WriteBatcher). */
  write(fh: FileHandle, offset: number, data: Buffer): Promise<void> {
    if (this.trySyncWrite(fh.fd, offset, data)) return Promise.resolve();
    if (this.batching && data.length > 0 && data.length <= BATCH_MAX) {
      let batcher = this.batchers.get(fh);
      if (!batcher) {
        batcher = new WriteBatcher(fh.fd, this.native!);
        this.batchers.set(fh, batcher);
      }
      return batcher.write(data, offset);
    }
    return writeFully(fh, offset, data);
  }

  /*
   * Small writes (≤ SYNC_WRITE_MAX) are written synchronously while that stays fast: a
   * buffered pwrite is a memcpy into the page cache (~3 µs for 4 KiB), far cheaper than any
   * threadpool hand-off on this class of VM (4 KiB random writes: ~1.5x the batched path).
   * The kernel can make a buffered write sleep (dirty-page throttling, journal waits); when
   * one sync write takes longer than SYNC_WRITE_SLOW_NS, every write goes asynchronous for
   * SYNC_WRITE_COOLDOWN_MS, so a slow disk stalls the event loop at most once a second.
   */
  private trySyncWrite(fd: number, offset: number, data: Buffer): boolean {
    if (!this.policy.syncWrites || data.length > SYNC_WRITE_MAX) return false;
    if (this.syncWritesPausedUntil !== 0) {
      if (Date.now() < this.syncWritesPausedUntil) return false;
      this.syncWritesPausedUntil = 0;
    }
    const start = process.hrtime.bigint();
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
    if (process.hrtime.bigint() - start > SYNC_WRITE_SLOW_NS) this.syncWritesPausedUntil = Date.now() + SYNC_WRITE_COOLDOWN_MS;
    return true;
  }
}

interface QueuedWrite {
  readonly data: Buffer;
  readonly position: number;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

/**
 * Writes issued in one event-loop turn go to the threadpool as ONE native batch
 * (pwriteBatch), flushed at setImmediate — i.e. after the socket data of this turn was
 * parsed and every resulting write queued. Cuts the per-write futex cost that dominated
 * 4 KiB random writes.
 *
 * One batch per file at a time: buffered writes to one file serialise on its inode lock in
 * the kernel anyway, so a second concurrent batch only spun on that lock (perf during 1 MiB
 * sequential writes: ~9% of the server's cycles in rwsem_spin_on_owner). Writes arriving
 * meanwhile form the next batch, issued when the current one completes.
 */
class WriteBatcher {
  private queue: QueuedWrite[] = [];
  private scheduled = false;
  private inFlight = false;

  constructor(
    private readonly fd: number,
    private readonly native: NativeFs,
  ) {}

  write(data: Buffer, position: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ data, position, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(this.flush);
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const items = this.queue;
    this.queue = [];
    this.inFlight = true;
    this.native.pwriteBatch!(
      this.fd,
      items.map((i) => i.data),
      items.map((i) => i.position),
    ).then(
      (results) => {
        for (let k = 0; k < items.length; k++) {
          const r = results[k]!;
          if (r >= 0) items[k]!.resolve();
          else items[k]!.reject(errnoError(-r, 'pwrite'));
        }
      },
      (err: Error) => {
        for (const item of items) item.reject(err);
      },
    ).finally(() => {
      this.inFlight = false;
      this.schedule();
    });
  };
}
