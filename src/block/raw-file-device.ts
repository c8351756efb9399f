/**
 * RawFileDevice: a plain image file as a BlockDevice. Offset n of the device is byte n
 * of the file. Used for raw exports and as the (always read-only) backing of overlays.
 *
 * Sparse files: holes are found with SEEK_DATA/SEEK_HOLE and reported as HOLE|ZERO;
 * trim punches holes and writeZeroes uses fallocate, all through native-fs. Without
 * the native addon (or with an IoPolicy that turns it off) the device still works,
 * reporting everything as data. The data path goes through FileIo (file-io.ts).
 */
import type { FileHandle } from 'node:fs/promises';
import { openChecked } from './open-guard.js';
import type { BlockDevice, DeviceCapabilities, Extent, IoOptions, LayerInfo, ZeroOptions } from './block-device.js';
import { FileIo, ShortReadError } from './file-io.js';
import type { NativeFs } from './native-fs.js';

export interface RawOpenOptions {
  readOnly?: boolean;
  /** Override the size (default: the file's size). Reads past EOF return zeros. */
  size?: number;
  /** I/O policy and fast-path state (default: every fast path, a private FileIo). */
  io?: FileIo;
  /** The path came from an image header (a backing): subject to --allow-path. */
  referenced?: boolean;
}

export class RawFileDevice implements BlockDevice {
  readonly capabilities: DeviceCapabilities;
  readonly preferredBlockSize = 4096;
  private readonly native: NativeFs | undefined;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readOnly: boolean,
    private readonly io: FileIo,
    /** The file's length when opened: bytes below it must read back (see read()). */
    private readonly fileLength: number,
  ) {
    this.native = io.native;
    const sparse = this.native !== undefined;
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
    const io = options.io ?? new FileIo();
    const fh = await openChecked(path, { writable: !readOnly, what: options.referenced ? 'backing file' : 'image', referenced: options.referenced, guard: io.guard });
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new Error(`${path}: not a regular file`);
      return new RawFileDevice(path, fh, options.size ?? st.size, readOnly, io, st.size);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /**
   * Bytes below the file's length at open must still be there: a short read inside it is
   * EIO naming the path and sizes (the file shrank under us), never zeros. Past that
   * length (a size override larger than the file) reads are zeros by design.
   */
  async read(offset: number, target: Buffer): Promise<void> {
    const required = Math.max(0, Math.min(target.length, this.fileLength - offset));
    try {
      await this.io.read(this.fh, offset, target, required);
    } catch (err) {
      if (!(err instanceof ShortReadError)) throw err;
      const now = await this.fh.stat().then((st) => st.size, () => NaN);
      throw Object.assign(
        new Error(`EIO: ${this.path}: file is ${now} bytes now, was ${this.fileLength} when opened: reading ${target.length} bytes at ${offset} ended at byte ${err.offset + err.got}`),
        { code: 'EIO', path: this.path, fileLength: this.fileLength, currentLength: now },
      );
    }
  }

  async write(offset: number, data: Buffer, options: IoOptions = {}): Promise<void> {
    await this.io.write(this.fh, offset, data);
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
    return this.io.extents(this.fh.fd, offset, length, 1);
  }

  async cache(): Promise<void> {}

  async close(): Promise<void> {
    await this.fh.close();
  }

  describe(): LayerInfo {
    return { format: 'raw', path: this.path, detail: { size: this.size } };
  }
}
