/**
 * RawFileDevice: a plain image file as a BlockDevice. Offset n of the device is byte n
 * of the file. Used for raw exports and as the (always read-only) backing of overlays.
 *
 * Sparse files: holes are found with SEEK_DATA/SEEK_HOLE and reported as HOLE|ZERO;
 * trim punches holes and writeZeroes uses fallocate, all through native-fs. Without
 * the native addon the device still works, reporting everything as data.
 */
import fs from 'node:fs';
import os from 'node:os';
import { open, type FileHandle } from 'node:fs/promises';
import {
  type BlockDevice,
  type DeviceCapabilities,
  EXTENT_HOLE,
  EXTENT_ZERO,
  type Extent,
  type IoOptions,
  type LayerInfo,
  type ZeroOptions,
} from './block-device.js';
import { nativeFs, type NativeFs } from './native-fs.js';

/** Upper bound on extents returned by one blockStatus call (the caller asks again). */
const MAX_EXTENTS_PER_CALL = 1024;

export interface RawOpenOptions {
  readOnly?: boolean;
  /** Override the size (default: the file's size). Reads past EOF return zeros. */
  size?: number;
}

export class RawFileDevice implements BlockDevice {
  readonly capabilities: DeviceCapabilities;
  readonly preferredBlockSize = 4096;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readOnly: boolean,
    private readonly native: NativeFs | undefined,
  ) {
    const sparse = native !== undefined;
    this.capabilities = Object.freeze({
      writable: !readOnly,
      flush: !readOnly,
      fua: !readOnly,
      trim: !readOnly && sparse,
      zero: !readOnly && sparse,
      fastZero: !readOnly && sparse,
      blockStatus: sparse,
      cache: false,
      multiConn: true,
    });
  }

  static async open(path: string, options: RawOpenOptions = {}): Promise<RawFileDevice> {
    const readOnly = options.readOnly ?? false;
    const fh = await open(path, readOnly ? 'r' : 'r+');
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new Error(`${path}: not a regular file`);
      return new RawFileDevice(path, fh, options.size ?? st.size, readOnly, nativeFs);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** The file descriptor, for formats that share the raw file's I/O helpers. */
  get fd(): number {
    return this.fh.fd;
  }

  async read(offset: number, target: Buffer): Promise<void> {
    await readFully(this.fh, offset, target);
  }

  async write(offset: number, data: Buffer, options: IoOptions = {}): Promise<void> {
    await writeFully(this.fh, offset, data);
    if (options.fua) await this.fh.datasync();
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async trim(offset: number, length: number, options: IoOptions = {}): Promise<void> {
    await this.native!.punchHole(this.fh.fd, offset, length);
    if (options.fua) await this.fh.datasync();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    if (options.noHole) {
      await this.native!.zeroRange(this.fh.fd, offset, length);
    } else {
      try {
        await this.native!.punchHole(this.fh.fd, offset, length);
      } catch (err) {
        // Filesystems without hole punching (e.g. some network filesystems): zero in place.
        if ((err as NodeJS.ErrnoException).code !== 'ENOTSUP') throw err;
        await this.native!.zeroRange(this.fh.fd, offset, length);
      }
    }
    if (options.fua) await this.fh.datasync();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return sparseExtents(this.native!, this.fh.fd, offset, length, 1);
  }

  async cache(): Promise<void> {}

  async close(): Promise<void> {
    await this.fh.close();
  }

  describe(): LayerInfo {
    return { format: 'raw', path: this.path, detail: { size: this.size } };
  }
}

/**
 * Data/hole extents of a file range from SEEK_DATA/SEEK_HOLE. Holes read as zeros.
 * `depth` is the allocation depth to report for both (a raw file has no backing, so
 * even its holes belong to this layer, as in qemu).
 */
export async function sparseExtents(
  native: NativeFs,
  fd: number,
  offset: number,
  length: number,
  depth: number,
): Promise<Extent[]> {
  const end = offset + length;
  const extents: Extent[] = [];
  let pos = offset;
  while (pos < end && extents.length < MAX_EXTENTS_PER_CALL) {
    const data = await native.seekData(fd, pos);
    if (data === -1 || data >= end) {
      extents.push({ length: end - pos, flags: EXTENT_HOLE | EXTENT_ZERO, depth });
      break;
    }
    if (data > pos) {
      extents.push({ length: data - pos, flags: EXTENT_HOLE | EXTENT_ZERO, depth });
      pos = data;
    }
    const hole = await native.seekHole(fd, pos);
    const dataEnd = hole === -1 ? end : Math.min(hole, end);
    extents.push({ length: dataEnd - pos, flags: 0, depth });
    pos = dataEnd;
  }
  return extents;
}

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

/*
 * Page-cache fast path for reads: try preadv2(RWF_NOWAIT) synchronously first; it never
 * sleeps on I/O (a cache miss answers -1 and we go to the threadpool). Saves the threadpool
 * round trip that dominated small-read latency (4 KiB random reads: ~3.5x). Turned off per
 * file when its filesystem does not support RWF_NOWAIT (-2, e.g. tmpfs here), and for the
 * process with COWNBD_NO_NOWAIT=1.
 */
const nowaitReadEnabled = typeof nativeFs?.preadNoWait === 'function' && process.env.COWNBD_NO_NOWAIT !== '1';
const nowaitUnsupported = new WeakSet<FileHandle>();
/** Above this, a synchronous memcpy would hold the event loop too long: always async. */
const NOWAIT_MAX = 4 * 1024 * 1024;

/** pread until `target` is full; bytes past EOF read as zeros. */
export async function readFully(fh: FileHandle, offset: number, target: Buffer): Promise<void> {
  let done = 0;
  const fd = fh.fd;
  if (nowaitReadEnabled && target.length <= NOWAIT_MAX && !nowaitUnsupported.has(fh)) {
    while (done < target.length) {
      const n = nativeFs!.preadNoWait!(fd, target.subarray(done), offset + done);
      if (n > 0) {
        done += n;
        continue;
      }
      if (n === 0) {
        target.fill(0, done);
        return;
      }
      if (n === -2) nowaitUnsupported.add(fh);
      break;
    }
  }
  while (done < target.length) {
    const bytesRead = await pread(fd, target, done, target.length - done, offset + done);
    if (bytesRead === 0) {
      target.fill(0, done);
      return;
    }
    done += bytesRead;
  }
}

/**
 * Writes issued in one event-loop turn go to the threadpool as ONE native batch
 * (pwriteBatch), flushed at setImmediate — i.e. after the socket data of this turn was
 * parsed and every resulting write queued. Cuts the per-write futex cost that dominated
 * 4 KiB random writes. Writes above BATCH_MAX go alone (their memcpy dominates anyway).
 */
const BATCH_MAX = 4 * 1024 * 1024;
const batchingEnabled = typeof nativeFs?.pwriteBatch === 'function' && process.env.COWNBD_NO_BATCH !== '1';

interface QueuedWrite {
  readonly data: Buffer;
  readonly position: number;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

class WriteBatcher {
  private queue: QueuedWrite[] = [];
  private scheduled = false;

  constructor(private readonly fd: number) {}

  write(data: Buffer, position: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ data, position, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const items = this.queue;
    this.queue = [];
    nativeFs!.pwriteBatch!(
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
    );
  };
}

/** One batcher per open file (keyed by the handle; collected with it). */
const batchers = new WeakMap<FileHandle, WriteBatcher>();

const ERRNO_NAMES = new Map<number, string>(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));

function errnoError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = ERRNO_NAMES.get(errno) ?? 'EIO';
  return Object.assign(new Error(`${code}: ${syscall} failed (errno ${errno})`), { code, errno: -errno, syscall });
}

/*
 * Small writes (≤ SYNC_WRITE_MAX) are written synchronously while that stays fast: a
 * buffered pwrite is a memcpy into the page cache (~3 µs for 4 KiB), far cheaper than any
 * threadpool hand-off on this class of VM (4 KiB random writes: ~1.5x the batched path).
 * The kernel can make a buffered write sleep (dirty-page throttling, journal waits); when
 * one sync write takes longer than SYNC_WRITE_SLOW_NS, every write goes asynchronous for
 * SYNC_WRITE_COOLDOWN_MS, so a slow disk stalls the event loop at most once a second.
 * COWNBD_SYNC_WRITES=0 turns the fast path off.
 */
const SYNC_WRITE_MAX = 64 * 1024;
const SYNC_WRITE_SLOW_NS = 1_000_000n;
const SYNC_WRITE_COOLDOWN_MS = 1_000;
const syncWritesEnabled = process.env.COWNBD_SYNC_WRITES !== '0';
let syncWritesPausedUntil = 0;

function trySyncWrite(fd: number, offset: number, data: Buffer): boolean {
  if (!syncWritesEnabled || data.length > SYNC_WRITE_MAX) return false;
  if (syncWritesPausedUntil !== 0) {
    if (Date.now() < syncWritesPausedUntil) return false;
    syncWritesPausedUntil = 0;
  }
  const start = process.hrtime.bigint();
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
  if (process.hrtime.bigint() - start > SYNC_WRITE_SLOW_NS) syncWritesPausedUntil = Date.now() + SYNC_WRITE_COOLDOWN_MS;
  return true;
}

/** pwrite until all of `data` is written. */
export async function writeFully(fh: FileHandle, offset: number, data: Buffer): Promise<void> {
  let done = 0;
  const fd = fh.fd;
  if (trySyncWrite(fd, offset, data)) return;
  if (batchingEnabled && data.length > 0 && data.length <= BATCH_MAX) {
    let batcher = batchers.get(fh);
    if (!batcher) {
      batcher = new WriteBatcher(fd);
      batchers.set(fh, batcher);
    }
    return batcher.write(data, offset);
  }
  while (done < data.length) {
    done += await pwrite(fd, data, done, data.length - done, offset + done);
  }
}
