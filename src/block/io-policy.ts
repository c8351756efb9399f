/**
 * IoPolicy: how this process does file and socket I/O, as one plain value that is built
 * once (by the CLI from its environment, by tests explicitly) and passed down to whatever
 * opens files or accepts sockets. Nothing reads the environment at import time and no
 * module keeps a switch of its own, so two stacks in one process can run two policies
 * (the tests open fallback devices next to native ones this way).
 *
 * Every fast path is on by default when the native addon loaded; the switches exist to
 * measure a fast path against its fallback (scripts/bench.sh) and to rule one out when
 * hunting a bug:
 *   COWNBD_NO_NATIVE=1     no sparse-file syscalls (raw: all data; zeroing by writing)
 *   COWNBD_NO_NOWAIT=1     no synchronous preadv2(RWF_NOWAIT) page-cache reads
 *   COWNBD_NO_BATCH=1      no batching of one event-loop turn's pwrites into one job
 *   COWNBD_SYNC_WRITES=0   no synchronous small buffered writes
 *   COWNBD_NO_SHARED_READS=1  sockets use Node's default reads (a fresh buffer per read)
 */
import { nativeFs, nativeFsUnavailableReason, type NativeFs } from './native-fs.js';

export interface IoPolicy {
  /** Sparse-file system calls (SEEK_DATA/HOLE, fallocate); undefined = portable fallback. */
  readonly native: NativeFs | undefined;
  /** Why `native` is undefined (for logs), undefined when it is present. */
  readonly nativeUnavailableReason?: string;
  /** Try a non-blocking page-cache read before going to the threadpool. */
  readonly nowaitReads: boolean;
  /** Send the pwrites of one event-loop turn to the threadpool as one batch. */
  readonly batchWrites: boolean;
  /** Write small buffers synchronously while that stays fast. */
  readonly syncWrites: boolean;
  /** Accepted sockets read into one shared buffer (server/shared-reads.ts). */
  readonly sharedReads: boolean;
  /**
   * SEEK_DATA/SEEK_HOLE on the calling thread instead of the threadpool: for the image
   * tools, which have no event loop to keep responsive (never for `serve`).
   */
  readonly syncSeeks?: boolean;
  /**
   * Milliseconds a writable overlay's allocation bits may stay in memory only: while some
   * are unpersisted, every this often the overlay persists them the FLUSH way (data
   * fdatasync, then the bitmap pages; formats/bitmap-persistence.ts). That bounds what a
   * process kill loses (README "Reliability"). 0: only FLUSH/FUA and close persist them.
   * Undefined: DEFAULT_BITMAP_SYNC_MS. `serve --bitmap-sync-interval` sets it.
   */
  readonly bitmapSyncMs?: number;
}

/** The bitmap sync interval when the policy names none (IoPolicy.bitmapSyncMs). */
export const DEFAULT_BITMAP_SYNC_MS = 1000;

/** Every fast path on (where the addon provides it). */
export function defaultIoPolicy(): IoPolicy {
  return {
    native: nativeFs,
    ...(nativeFs ? {} : { nativeUnavailableReason: nativeFsUnavailableReason }),
    nowaitReads: true,
    batchWrites: true,
    syncWrites: true,
    sharedReads: true,
  };
}

/** The policy the environment variables above ask for; called once by the CLI. */
export function ioPolicyFromEnv(env: NodeJS.ProcessEnv): IoPolicy {
  const base = defaultIoPolicy();
  const noNative = env.COWNBD_NO_NATIVE === '1';
  return {
    native: noNative ? undefined : base.native,
    ...(noNative ? { nativeUnavailableReason: 'disabled by COWNBD_NO_NATIVE=1' } : base.nativeUnavailableReason ? { nativeUnavailableReason: base.nativeUnavailableReason } : {}),
    nowaitReads: env.COWNBD_NO_NOWAIT !== '1',
    batchWrites: env.COWNBD_NO_BATCH !== '1',
    syncWrites: env.COWNBD_SYNC_WRITES !== '0',
    sharedReads: env.COWNBD_NO_SHARED_READS !== '1',
  };
}

/** The same policy without the native addon (the portable fallback paths). */
export function withoutNative(policy: IoPolicy): IoPolicy {
  return { ...policy, native: undefined, nativeUnavailableReason: 'disabled by policy' };
}
