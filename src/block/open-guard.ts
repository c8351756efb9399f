/**
 * Opening image files without trusting their names: every file of an image stack (the
 * top image, overlay metadata, add-cow image files, backing files) is opened here.
 *
 *   open(O_NONBLOCK) ─► fstat: regular file (or block device where meant), else refused
 *     (a FIFO never blocks open() this way; it is refused before any read)
 *   ─► statfs: procfs/sysfs refused (/proc/self/mem "is" a 0-byte regular file)
 *   ─► OpenGuard (optional, the server's): --allow-path confinement of paths that came
 *      from an image header, and one registry of open files by device+inode
 *
 * The registry makes "the base is never modified" hold against hostile headers: a file
 * held read-only (any layer of any export) is never opened writable by another, and a
 * file held writable is opened by no one else. The guard is one object per server (made
 * by `serve`, carried by its FileIo), so it is process-wide there and absent for the
 * image tool (where `commit` legitimately writes into a backing it also reads).
 */
import { constants, type Stats } from 'node:fs';
import { open, stat, statfs, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { DeviceError } from './block-device.js';

/** Filesystems whose "files" are kernel interfaces, not disks (statfs f_type). */
const PSEUDO_FS = new Map<number, string>([
  [0x9fa0, 'procfs'],
  [0x62656572, 'sysfs'],
  [0x1cd1, 'devpts'],
  [0x64626720, 'debugfs'],
]);

export interface OpenCheckedOptions {
  readonly writable: boolean;
  /** What the file is, for messages ("backing file", "image file", …). */
  readonly what: string;
  /** Block devices are fine here (raw images, backings); default false. */
  readonly allowBlockDevice?: boolean;
  /** The path came from an image header (subject to --allow-path). */
  readonly referenced?: boolean;
  readonly guard?: OpenGuard;
}

interface Holder {
  readers: number;
  writers: number;
  path: string;
}

export class OpenGuard {
  private readonly held = new Map<string, Holder>();
  private readonly allow: readonly string[] | undefined;

  /** allowPaths: directories header-referenced paths must lie in (undefined = anywhere). */
  constructor(allowPaths?: readonly string[]) {
    this.allow = allowPaths && allowPaths.length > 0 ? allowPaths.map((d) => path.resolve(d)) : undefined;
  }

  /** Refuse a header-referenced path outside the allowed directories. */
  checkReferenced(file: string, what: string): void {
    if (!this.allow) return;
    const abs = path.resolve(file);
    if (this.allow.some((d) => abs === d || abs.startsWith(d.endsWith(path.sep) ? d : d + path.sep))) return;
    throw new DeviceError('EACCES', `${what} "${abs}" (named in an image header) is outside the allowed directories (--allow-path ${this.allow.join(', ')})`);
  }

  /** Hold `file` read-only for the guard's lifetime (`--base`: never opened writable). */
  async pinReadOnly(file: string): Promise<void> {
    this.acquire(await stat(file), false, file, 'base image');
  }

  /** Register an open of (dev, ino); returns the release function. */
  acquire(st: Stats, writable: boolean, file: string, what: string): () => void {
    const key = `${st.dev}:${st.ino}`;
    const h = this.held.get(key) ?? { readers: 0, writers: 0, path: file };
    if (writable && h.readers + h.writers > 0) {
      throw new DeviceError('EBUSY', `${what} ${file} is already open ${h.writers ? 'writable' : 'read-only'} in this server (as ${h.path}): it is never opened writable a second time`);
    }
    if (!writable && h.writers > 0) {
      throw new DeviceError('EBUSY', `${what} ${file} is open writable in this server (as ${h.path}): it cannot also be a read-only layer`);
    }
    if (writable) h.writers++;
    else h.readers++;
    this.held.set(key, h);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (writable) h.writers--;
      else h.readers--;
      if (h.readers + h.writers === 0) this.held.delete(key);
    };
  }
}

/** Open an image file (see the note at the top); the handle's close() releases the guard. */
export async function openChecked(file: string, options: OpenCheckedOptions): Promise<FileHandle> {
  if (options.referenced) options.guard?.checkReferenced(file, options.what);
  const flags = (options.writable ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NONBLOCK | constants.O_NOCTTY;
  const fh = await open(file, flags);
  let release: (() => void) | undefined;
  try {
    const st = await fh.stat();
    const kind = fileKind(st);
    if (kind !== 'file' && !(kind === 'block device' && options.allowBlockDevice)) {
      throw new DeviceError('EINVAL', `${options.what} ${file} is ${kind === 'block device' ? 'a block device' : `a ${kind}`}, not a regular file: refused`);
    }
    const fs = await statfs(file).catch(() => undefined);
    const pseudo = fs ? PSEUDO_FS.get(Number(fs.type)) : undefined;
    if (pseudo) throw new DeviceError('EINVAL', `${options.what} ${file} is on ${pseudo} (a kernel interface, not an image): refused`);
    release = options.guard?.acquire(st, options.writable, file, options.what);
  } catch (err) {
    await fh.close().catch(() => {});
    throw err;
  }
  if (release) {
    const close = fh.close.bind(fh);
    fh.close = () => {
      release!();
      return close();
    };
  }
  return fh;
}

function fileKind(st: Stats): string {
  if (st.isFile()) return 'file';
  if (st.isBlockDevice()) return 'block device';
  if (st.isFIFO()) return 'FIFO (named pipe)';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'character device';
  if (st.isDirectory()) return 'directory';
  return 'special file';
}
