/**
 * Opening image files without trusting their names: every file of an image stack (the
 * top image, overlay metadata, add-cow image files, backing files) is opened here.
 *
 *   [header path + --allow-path: realpath(name) must lie in an allowed dir, so an outside
 *    file is normally not even opened]
 *   open(O_NONBLOCK) ─► fstat: regular file (or block device where meant), else refused
 *     (a FIFO never blocks open() this way; it is refused before any read)
 *   ─► fstatfs of the DESCRIPTOR: procfs/sysfs refused (/proc/self/mem "is" a 0-byte
 *      regular file)
 *   ─► OpenGuard (optional, the server's): --allow-path confinement of paths that came
 *      from an image header, checked again on the path of the DESCRIPTOR, and one registry
 *      of open files by device+inode
 *
 * Why the descriptor and not the name: a name is only a pointer that can move between a
 * check and the open (a symlink flipped by someone with write access to a directory on
 * the path). Everything judged after open() is judged on what was opened: fstat,
 * fstatfs (the native addon; without it statfs("/proc/self/fd/N"), which the kernel
 * resolves to the open file, not to the name), and the file's real path as
 * /proc/self/fd/N names it. Checking what was opened makes O_NOFOLLOW unnecessary (and
 * it would only guard the last component). The allowed directories are compared by real
 * path too, so `allowed/link.raw -> ../outside/x` is outside (docs/security.md).
 *
 * The registry makes "the base is never modified" hold against hostile headers: a file
 * held read-only (any layer of any export) is never opened writable by another, and a
 * file held writable is opened by no one else. The guard is one object per server (made
 * by `serve`, carried by its FileIo), so it is process-wide there and absent for the
 * image tool (where `commit` legitimately writes into a backing it also reads).
 */
import { constants, type Stats } from 'node:fs';
import { realpathSync } from 'node:fs';
import { open, readlink, realpath, stat, statfs, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { DeviceError } from './block-device.js';
import { nativeFs, type NativeFs } from './native-fs.js';

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

  /**
   * allowPaths: directories header-referenced paths must lie in (undefined = anywhere),
   * kept as real paths (a directory that does not exist yet keeps its absolute name).
   */
  constructor(allowPaths?: readonly string[]) {
    this.allow = allowPaths && allowPaths.length > 0 ? allowPaths.map(realDir) : undefined;
  }

  private inside(real: string): boolean {
    return this.allow!.some((d) => real === d || real.startsWith(d.endsWith(path.sep) ? d : d + path.sep));
  }

  private refuse(file: string, real: string, what: string): never {
    const resolved = real === path.resolve(file) ? '' : ` (resolves to "${real}")`;
    throw new DeviceError('EACCES', `${what} "${file}"${resolved} (named in an image header) is outside the allowed directories (--allow-path ${this.allow!.join(', ')})`);
  }

  /**
   * Before the open: refuse a header-referenced path whose real path is outside the
   * allowed directories. A name that does not resolve is left to open() to report.
   */
  async checkReferenced(file: string, what: string): Promise<void> {
    if (!this.allow) return;
    const real = await realpath(file).catch(() => undefined);
    if (real !== undefined && !this.inside(real)) this.refuse(file, real, what);
  }

  /**
   * After the open: the same rule on what `fd` actually is (the name may have moved since
   * checkReferenced). /proc/self/fd/N is the kernel's path of the open file; without
   * /proc, the name is resolved again and must still be the opened inode.
   */
  async checkOpened(fd: number, st: Stats, file: string, what: string): Promise<void> {
    if (!this.allow) return;
    let real = await readlink(`/proc/self/fd/${fd}`).catch(() => undefined);
    if (real === undefined) {
      real = await realpath(file).catch(() => undefined);
      const now = real === undefined ? undefined : await stat(real).catch(() => undefined);
      if (real === undefined || !now || now.dev !== st.dev || now.ino !== st.ino) {
        throw new DeviceError('EACCES', `${what} "${file}" (named in an image header) changed while it was being opened: refused (--allow-path)`);
      }
    }
    if (!this.inside(real)) this.refuse(file, real, what);
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
  const confine = options.referenced ? options.guard : undefined;
  await confine?.checkReferenced(file, options.what);
  const flags = (options.writable ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NONBLOCK | constants.O_NOCTTY;
  const fh = await open(file, flags);
  let release: (() => void) | undefined;
  try {
    const st = await fh.stat();
    const kind = fileKind(st);
    if (kind !== 'file' && !(kind === 'block device' && options.allowBlockDevice)) {
      throw new DeviceError('EINVAL', `${options.what} ${file} is ${kind === 'block device' ? 'a block device' : `a ${kind}`}, not a regular file: refused`);
    }
    const type = await filesystemOf(fh.fd, file);
    const pseudo = type === undefined ? undefined : PSEUDO_FS.get(type);
    if (pseudo) throw new DeviceError('EINVAL', `${options.what} ${file} is on ${pseudo} (a kernel interface, not an image): refused`);
    await confine?.checkOpened(fh.fd, st, file, options.what);
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

/**
 * statfs f_type of the filesystem the open descriptor `fd` lives on (undefined if it
 * cannot be learnt). Preference: fstatfs (native addon); statfs("/proc/self/fd/N"), which
 * the kernel follows to the open file itself; and only without /proc, statfs of the name
 * (racy, but a system without /proc mounted has no /proc/self/environ to race to either).
 */
export async function filesystemOf(fd: number, file: string, native: Pick<NativeFs, 'fsType'> | undefined = nativeFs): Promise<number | undefined> {
  if (native?.fsType) return native.fsType(fd);
  const viaFd = await statfs(`/proc/self/fd/${fd}`).catch(() => undefined);
  if (viaFd) return Number(viaFd.type) >>> 0;
  const byName = await statfs(file).catch(() => undefined);
  return byName ? Number(byName.type) >>> 0 : undefined;
}

function realDir(dir: string): string {
  try {
    return realpathSync(dir);
  } catch {
    return path.resolve(dir);
  }
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
