/**
 * Crash-safe file creation: a file the project creates is either absent or complete,
 * never half-written, whatever moment a `kill -9` or power cut hits.
 *
 *   open TEMP (same directory, O_EXCL) ─► write(fh) ─► fsync ─► close
 *     ─► link TEMP → FILE (no overwrite: fails with EEXIST if FILE appeared meanwhile)
 *        or rename TEMP → FILE (overwrite)
 *     ─► unlink TEMP ─► fsync the directory (the new name is durable)
 *
 * TEMP is `.NAME.PID.RANDOM.cownbd-tmp`: hidden, never mistaken for an image, and
 * removeDeadTemps() deletes those whose process is gone. Filesystems without hard links
 * fall back to check-then-rename (a race with another creator is then possible).
 */
import { randomBytes } from 'node:crypto';
import { link, lstat, open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]{8}\.cownbd-tmp$/;

export interface AtomicCreateOptions {
  /** Replace an existing FILE (default: fail with code EEXIST). */
  readonly overwrite?: boolean;
  /** Permission bits before the umask (default 0o666, like open()). */
  readonly mode?: number;
}

/** The temp name used while creating `file`. */
export function tempNameFor(file: string): string {
  const abs = path.resolve(file);
  return path.join(path.dirname(abs), `.${path.basename(abs)}.${process.pid}.${randomBytes(4).toString('hex')}.cownbd-tmp`);
}

/** Create `file` with the contents `write` puts there, crash-safely (see the note above). */
export async function createFileAtomically(file: string, write: (fh: FileHandle) => Promise<void>, options: AtomicCreateOptions = {}): Promise<void> {
  const abs = path.resolve(file);
  if (!options.overwrite && (await exists(abs))) throw existsError(abs);
  const temp = tempNameFor(abs);
  const fh = await open(temp, 'wx', options.mode ?? 0o666);
  let closed = false;
  try {
    await write(fh);
    await fh.sync();
    await fh.close();
    closed = true;
    if (options.overwrite) await rename(temp, abs);
    else await linkNoReplace(temp, abs);
    await syncDir(path.dirname(abs));
  } finally {
    if (!closed) await fh.close().catch(() => {});
    await unlink(temp).catch(() => {});
  }
}

async function linkNoReplace(temp: string, abs: string): Promise<void> {
  try {
    await link(temp, abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw existsError(abs);
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw err;
    // No hard links here (e.g. vfat): check, then rename.
    if (await exists(abs)) throw existsError(abs);
    await rename(temp, abs);
  }
}

/** fsync a directory so a rename/unlink/link in it is durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Delete temp files of creations whose process is gone; returns their names. */
export async function removeDeadTemps(dir: string, alive: (pid: number) => boolean = pidAlive): Promise<string[]> {
  const removed: string[] = [];
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    const m = TEMP_NAME.exec(f);
    if (!m || alive(Number(m[1]))) continue;
    await unlink(path.join(dir, f)).catch(() => {});
    removed.push(f);
  }
  return removed;
}

export function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function exists(p: string): Promise<boolean> {
  return (await lstat(p).catch(() => undefined)) !== undefined;
}

function existsError(abs: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${abs}: file exists: EEXIST`), { code: 'EEXIST', path: abs });
}
