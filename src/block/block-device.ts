/**
 * The BlockDevice contract: every driver (raw, cow, add-cow) and every stack of
 * them speaks this interface, in BYTES, never sectors.
 *
 *   NBD server ──► CheckedDevice ──► CowDevice ──► RawFileDevice (backing, read-only)
 *                  (ranges, RO,      (format       (plain file)
 *                   lifecycle,        logic only)
 *                   emulation)
 *
 * Callers of a *driver* (i.e. CheckedDevice, or a format driver calling its backing
 * device through a CheckedDevice) guarantee:
 *   - 0 <= offset, length >= 0, offset + length <= size  (never past the end);
 *   - mutating calls only when capabilities.writable;
 *   - trim / writeZeroes / blockStatus / cache only when the matching capability is set
 *     (CheckedDevice emulates writeZeroes with writes and fua with flush when absent);
 *   - no call after close() has started.
 * Drivers may therefore trust their inputs and implement only format logic.
 *
 * Errors: drivers throw `DeviceError` (or Node fs errors, which carry `code`). The
 * server maps `code` ('EIO', 'ENOSPC', 'EINVAL', 'EPERM', 'ENOTSUP', 'ESHUTDOWN', …)
 * to the NBD error number.
 */

/** What a device can do. Declared, never inferred. */
export interface DeviceCapabilities {
  /** Opened read-write: write/trim/writeZeroes are allowed. */
  readonly writable: boolean;
  /** flush() makes completed writes durable (otherwise it is a no-op). */
  readonly flush: boolean;
  /** The driver honours IoOptions.fua itself; otherwise CheckedDevice flushes after the op. */
  readonly fua: boolean;
  /** trim() does something useful (punches holes / releases space). */
  readonly trim: boolean;
  /** writeZeroes() is native; otherwise CheckedDevice writes zero buffers. */
  readonly zero: boolean;
  /** writeZeroes() is cheap (no data is written), so FAST_ZERO requests may succeed. */
  readonly fastZero: boolean;
  /** blockStatus() reports real holes/zeros (otherwise everything is data, depth 1). */
  readonly blockStatus: boolean;
  /** cache() prefetches (otherwise it is a no-op). */
  readonly cache: boolean;
  /** One instance may be shared by many connections with coherent results. */
  readonly multiConn: boolean;
}

export interface IoOptions {
  /** Force Unit Access: data must be durable before the promise resolves. */
  readonly fua?: boolean;
}

export interface ZeroOptions extends IoOptions {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated (no hole punching). */
  readonly noHole?: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP unless zeroing is fast. */
  readonly fast?: boolean;
}

/** base:allocation flags (NBD spec, "base:allocation metadata context"). */
export const EXTENT_HOLE = 1;
export const EXTENT_ZERO = 2;

/**
 * One run of uniform status, starting where the previous one ended.
 * `depth` follows qemu:allocation-depth: 0 = no layer of this chain holds the range
 * (reads as zeros), 1 = this device, 2 = its backing device, and so on.
 */
export interface Extent {
  readonly length: number;
  /** EXTENT_HOLE | EXTENT_ZERO bits. */
  readonly flags: number;
  readonly depth: number;
}

/** Human/tool-facing description of one layer, for logs, `info` and `map`. */
export interface LayerInfo {
  readonly format: string;
  readonly path?: string;
  readonly detail?: Record<string, unknown>;
  readonly backing?: LayerInfo;
}

export interface BlockDevice {
  /** Virtual size in bytes. Fixed for the device's lifetime. */
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  /** Granularity at which the device works best (cow: 4096, add-cow: cluster size). */
  readonly preferredBlockSize: number;
  /**
   * Changes whenever the layer chain under this device changes while it is open (a live
   * snapshot stacks a new top: every depth below grows by one). Absent: the chain is fixed.
   * Lets a client of depths (dirty bitmaps) tell cheaply whether its view of the chain is
   * still current without calling describe(), which counts allocation bitmaps.
   */
  readonly chainGeneration?: number;

  /** Fill all of `target` with the bytes at [offset, offset + target.length). */
  read(offset: number, target: Buffer): Promise<void>;
  write(offset: number, data: Buffer, options?: IoOptions): Promise<void>;
  /** Make every write that has completed so far durable. */
  flush(): Promise<void>;
  /** Hint: the range's contents may be discarded. Contents afterwards: unspecified (ours: zeros). */
  trim(offset: number, length: number, options?: IoOptions): Promise<void>;
  /** The range must read back as zeros afterwards. */
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void>;
  /**
   * Status of [offset, offset + length). Returns at least one extent; the extents are
   * contiguous from `offset` and may cover less than `length` (the caller asks again)
   * but never more than `length`.
   */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** Prefetch hint; must not change contents. */
  cache(offset: number, length: number): Promise<void>;
  /**
   * Release resources. Not a flush: callers flush first if they need the data of completed
   * writes durable. Metadata a driver caches (an overlay's dirty allocation-bitmap pages)
   * is persisted with its usual ordering (data before bitmap), so completed writes are
   * never silently dropped by a close (overlay-core.ts).
   */
  close(): Promise<void>;
  describe(): LayerInfo;
}

/** A driver error carrying an errno-style code the server maps to an NBD error. */
export class DeviceError extends Error {
  constructor(
    readonly code: DeviceErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'DeviceError';
  }
}

export type DeviceErrorCode =
  | 'EPERM'
  | 'EIO'
  | 'ENOMEM'
  | 'EINVAL'
  | 'ENOSPC'
  | 'EOVERFLOW'
  | 'ENOTSUP'
  | 'ESHUTDOWN'
  | 'EBUSY'
  | 'EACCES'
  | 'ELOOP';
