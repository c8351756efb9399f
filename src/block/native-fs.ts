/**
 * Sparse-file system calls Node does not expose: lseek(SEEK_DATA/SEEK_HOLE) and
 * fallocate(PUNCH_HOLE / ZERO_RANGE), plus fstatfs (the filesystem of an open descriptor). They come from a tiny Node-API addon
 * (native/fsx.c, built at install time by scripts/build-native.sh against the
 * `node-api-headers` package, so it is ABI-stable across Node versions).
 *
 * If the addon is missing (no C compiler at install time), `nativeFs` is undefined and
 * callers fall back: raw devices then report everything as data and zero by writing.
 *
 * All four calls run on libuv's thread pool. Failures reject with an Error carrying
 * `code` (errno name; EOPNOTSUPP is spelled 'ENOTSUP'), `errno` and `syscall`; bad
 * arguments reject with 'EINVAL'. punchHole rejects 'ENOTSUP' where the filesystem
 * cannot punch; zeroRange never does: it falls back to punch + re-allocate, then to
 * writing zeros (see native/fsx.c). On ext4, ZERO_RANGE leaves unwritten extents,
 * which SEEK_DATA reports as holes (they read as zeros, so that is still correct).
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface NativeFs {
  /** Next offset >= `offset` that holds data, or -1 if there is none before EOF (ENXIO). */
  seekData(fd: number, offset: number): Promise<number>;
  /** Next offset >= `offset` that starts a hole (EOF counts as a hole), or -1 past EOF. */
  seekHole(fd: number, offset: number): Promise<number>;
  /** seekData/seekHole on the calling thread (IoPolicy.syncSeeks); absent in older builds. */
  seekDataSync?(fd: number, offset: number): number;
  seekHoleSync?(fd: number, offset: number): number;
  /** fallocate(PUNCH_HOLE|KEEP_SIZE): deallocate; the range reads as zeros. */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** fallocate(ZERO_RANGE|KEEP_SIZE): zeros that stay allocated. */
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
  /**
   * Synchronous preadv2(RWF_NOWAIT): bytes read (0 = EOF), -1 if the kernel would block
   * (not in page cache) or failed, -2 if RWF_NOWAIT is unsupported. Never sleeps on I/O.
   */
  preadNoWait?(fd: number, target: Uint8Array, position: number): number;
  /**
   * All pwrites of a batch in ONE threadpool job; result[i] = bytes written or -errno.
   * (One job per write costs a futex wake-up each on the main thread.)
   */
  pwriteBatch?(fd: number, buffers: Uint8Array[], positions: number[]): Promise<number[]>;
  /** glibc malloc_trim(0): return free heap memory to the kernel; true if some was. */
  mallocTrim?(): boolean;
  /**
   * fstatfs(fd).f_type (unsigned): the filesystem the open descriptor lives on. Absent in
   * older builds; open-guard.ts then asks statfs("/proc/self/fd/N"), which follows the
   * descriptor too.
   */
  fsType?(fd: number): Promise<number>;
}

interface Loaded {
  readonly native?: NativeFs;
  readonly reason?: string;
}

/*
 * Loading the addon reads no configuration: whether to USE it is the IoPolicy's business
 * (io-policy.ts; COWNBD_NO_NATIVE is read there, by the CLI, once).
 */
function load(): Loaded {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // dist/block/native-fs.js or src/block/native-fs.ts → <root>/build/fsx.node
  const candidate = path.resolve(here, '..', '..', 'build', 'fsx.node');
  if (!existsSync(candidate)) return { reason: `${candidate} not built (run scripts/build-native.sh; needs a C compiler)` };
  try {
    return { native: createRequire(import.meta.url)(candidate) as NativeFs };
  } catch (err) {
    // A broken build must not take the server down: degrade to the no-holes fallback.
    return { reason: `${candidate} failed to load: ${(err as Error).message}` };
  }
}

const loaded = load();
/** The addon, or undefined when it is missing (see nativeFsUnavailableReason). */
export const nativeFs: NativeFs | undefined = loaded.native;
/** Why `nativeFs` is undefined (for logs and `info`), or undefined when it loaded. */
export const nativeFsUnavailableReason: string | undefined = loaded.reason;
