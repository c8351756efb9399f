/**
 * CheckedDevice: the one wrapper that enforces the BlockDevice contract at a layer
 * boundary, so drivers contain only format logic (nbdkit's server/backend.c idea).
 *
 * It checks: integer, non-negative, in-range offsets/lengths (EINVAL for reads,
 * ENOSPC for writes past the end, as the NBD spec's error table asks); writes on a
 * read-only device (EPERM); use after close (ESHUTDOWN). It emulates what a driver
 * lacks: writeZeroes via zero-buffer writes, FUA via a flush after the operation,
 * blockStatus as "all data, this layer", cache as a no-op. close() is idempotent.
 */
import {
  type BlockDevice,
  type DeviceCapabilities,
  DeviceError,
  type Extent,
  type IoOptions,
  type LayerInfo,
  type ZeroOptions,
} from './block-device.js';

/** Zero writes are emulated in chunks of this size from one shared zero buffer. */
const ZERO_CHUNK = 1024 * 1024;
const ZERO_BUFFER = Buffer.alloc(ZERO_CHUNK);

export interface CheckedDeviceOptions {
  /** Present a writable driver as read-only (e.g. `--read-only`, or a backing file). */
  readOnly?: boolean;
}

export class CheckedDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  readonly preferredBlockSize: number;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly inner: BlockDevice,
    options: CheckedDeviceOptions = {},
  ) {
    this.size = inner.size;
    this.preferredBlockSize = inner.preferredBlockSize;
    const caps = inner.capabilities;
    const writable = caps.writable && !options.readOnly;
    this.capabilities = Object.freeze({
      ...caps,
      writable,
      // Emulated for writable devices, so always offered there.
      zero: writable,
      trim: writable && caps.trim,
      fastZero: writable && caps.zero && caps.fastZero,
      fua: writable && (caps.fua || caps.flush),
    });
  }

  /** The wrapped driver, for tools that need format-specific access. */
  get driver(): BlockDevice {
    return this.inner;
  }

  async read(offset: number, target: Buffer): Promise<void> {
    this.checkRange('read', offset, target.length, 'EINVAL');
    if (target.length === 0) return;
    await this.inner.read(offset, target);
  }

  async write(offset: number, data: Buffer, options: IoOptions = {}): Promise<void> {
    this.checkWritable('write');
    this.checkRange('write', offset, data.length, 'ENOSPC');
    if (data.length === 0) return this.fuaOnly(options);
    await this.inner.write(offset, data, this.driverIo(options));
    await this.emulateFua(options);
  }

  async flush(): Promise<void> {
    this.checkOpen('flush');
    if (this.inner.capabilities.flush) await this.inner.flush();
  }

  async trim(offset: number, length: number, options: IoOptions = {}): Promise<void> {
    this.checkWritable('trim');
    this.checkRange('trim', offset, length, 'EINVAL');
    if (length === 0 || !this.inner.capabilities.trim) return this.fuaOnly(options);
    await this.inner.trim(offset, length, this.driverIo(options));
    await this.emulateFua(options);
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    this.checkWritable('write_zeroes');
    this.checkRange('write_zeroes', offset, length, 'ENOSPC');
    const caps = this.inner.capabilities;
    if (options.fast && !(caps.zero && caps.fastZero)) {
      throw new DeviceError('ENOTSUP', 'fast zeroing is not supported by this device');
    }
    if (length === 0) return this.fuaOnly(options);
    if (caps.zero) {
      await this.inner.writeZeroes(offset, length, { ...options, fua: options.fua && caps.fua });
    } else {
      for (let done = 0; done < length; done += ZERO_CHUNK) {
        const n = Math.min(ZERO_CHUNK, length - done);
        await this.inner.write(offset + done, ZERO_BUFFER.subarray(0, n));
      }
    }
    await this.emulateFua(options, caps.zero);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange('block_status', offset, length, 'EINVAL');
    if (length === 0) return [];
    if (!this.inner.capabilities.blockStatus) return [{ length, flags: 0, depth: 1 }];
    const extents = await this.inner.blockStatus(offset, length);
    return clipExtents(extents, length);
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkRange('cache', offset, length, 'EINVAL');
    if (length > 0 && this.inner.capabilities.cache) await this.inner.cache(offset, length);
  }

  close(): Promise<void> {
    this.closed = true;
    this.closing ??= this.inner.close();
    return this.closing;
  }

  describe(): LayerInfo {
    return this.inner.describe();
  }

  private driverIo(options: IoOptions): IoOptions {
    return { fua: Boolean(options.fua) && this.inner.capabilities.fua };
  }

  /** FUA on a driver that cannot do it natively: flush after the operation. */
  private async emulateFua(options: IoOptions, nativeHandled = true): Promise<void> {
    const caps = this.inner.capabilities;
    if (options.fua && (!caps.fua || !nativeHandled) && caps.flush) await this.inner.flush();
  }

  private async fuaOnly(options: IoOptions): Promise<void> {
    if (options.fua && this.inner.capabilities.flush) await this.inner.flush();
  }

  private checkOpen(op: string): void {
    if (this.closed) throw new DeviceError('ESHUTDOWN', `${op}: device is closed`);
  }

  private checkWritable(op: string): void {
    this.checkOpen(op);
    if (!this.capabilities.writable) throw new DeviceError('EPERM', `${op}: device is read-only`);
  }

  private checkRange(op: string, offset: number, length: number, pastEnd: 'EINVAL' | 'ENOSPC'): void {
    this.checkOpen(op);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new DeviceError('EINVAL', `${op}: invalid range offset=${offset} length=${length}`);
    }
    if (offset + length > this.size) {
      throw new DeviceError(
        pastEnd,
        `${op}: offset=${offset} length=${length} extends past the end of the device (size=${this.size})`,
      );
    }
  }
}

/** Drop zero-length extents and trim the list so it never covers more than `length`. */
export function clipExtents(extents: readonly Extent[], length: number): Extent[] {
  const out: Extent[] = [];
  let covered = 0;
  for (const e of extents) {
    if (covered >= length) break;
    if (e.length <= 0) continue;
    const take = Math.min(e.length, length - covered);
    out.push(take === e.length ? e : { ...e, length: take });
    covered += take;
  }
  if (out.length === 0) throw new DeviceError('EIO', 'block status: driver returned no extents');
  return out;
}

/** Merge adjacent extents with equal flags and depth (keeps BLOCK_STATUS replies short). */
export function mergeExtents(extents: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last && last.flags === e.flags && last.depth === e.depth) {
      out[out.length - 1] = { ...last, length: last.length + e.length };
    } else if (e.length > 0) {
      out.push(e);
    }
  }
  return out;
}
