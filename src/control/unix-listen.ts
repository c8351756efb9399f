/**
 * Listen on a Unix socket that is never reachable with the wrong permissions.
 *
 * bind() creates the socket file with mode 0777 & ~umask; a chmod after listen() leaves a
 * window in which anyone may connect (under umask 000, another user did). The umask is
 * process-wide, so it cannot be narrowed just for this bind. Instead the socket is bound
 * inside a fresh private directory (mkdtemp: mode 0700) beside the target, chmod'ed to
 * 0600 there, and hard-linked into place: the name appears with its final mode,
 * atomically. link() (not rename()) because it never replaces an existing file: a stale
 * socket is removed first, anything else at that name makes the start fail (EEXIST). A
 * listening Unix socket keeps working under its new name (it is bound to the inode).
 */
import { chmod, link, lstat, mkdtemp, rmdir, unlink } from 'node:fs/promises';
import path from 'node:path';

/**
 * Bind with `listen(tempPath)` in the private directory, then move the socket to `file`.
 * `listen` must resolve once the server is listening.
 */
export async function listenUnixPrivately(file: string, mode: number, listen: (tempPath: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(path.join(path.dirname(file), '.cownbd-'));
  const temp = path.join(dir, 's');
  try {
    await listen(temp);
    await chmod(temp, mode);
    await removeStaleSocket(file);
    await link(temp, file);
  } finally {
    await unlink(temp).catch(() => {}); // the private name goes in every case
    await rmdir(dir).catch(() => {});
  }
}

/** A socket left by a previous run is replaced; any other file is not touched. */
async function removeStaleSocket(file: string): Promise<void> {
  try {
    if ((await lstat(file)).isSocket()) await unlink(file);
  } catch {
    // Does not exist.
  }
}
