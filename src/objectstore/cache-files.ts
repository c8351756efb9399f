/**
 * Files of the chunk cache (chunk-cache.ts keeps the index, this module the files):
 *
 *   DIR/chunks/<sha256>   a chunk, named by its hash
 *   DIR/tmp/              files being written (renamed into chunks/ when complete); a file
 *                         older than STALE_TEMP_MS was left by a dead writer
 *
 * A Stamp is what a file looked like when it was verified (inode, size, mtime): a file
 * whose fstat differs, or that was deleted (no links), is hashed again before use.
 * Also the helpers of `cownbd cache show|clear`, which work without a server.
 */
import { randomBytes } from 'node:crypto';
import { fstatSync } from 'node:fs';
import { lstat, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

export const CHUNK_NAME = /^[0-9a-f]{64}$/;

/** What a verified file looked like (fstat) when it was verified. */
export interface Stamp {
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
}

/** The file behind `fh` is still the one that was verified (same inode, size, mtime, not deleted). */
export function sameFile(v: Stamp | undefined, fh: FileHandle): boolean {
  const st = fstatSync(fh.fd);
  if (!v) return st.nlink > 0;
  return st.nlink > 0 && st.ino === v.ino && st.size === v.size && st.mtimeMs === v.mtimeMs;
}

/**
 * A temporary file is written and renamed within seconds; one older than this was left by a
 * writer that died (kill -9, full disk, power loss).
 */
export const STALE_TEMP_MS = 10 * 60_000;

/**
 * Remove what dead writers left in DIR/tmp. Only old entries: a cache directory may be shared
 * by several processes (docs/object-store.md), and another one may be writing a file there
 * right now — removing the whole directory would fail its rename (and with ENOTEMPTY, racing
 * its next write, this process's start-up).
 */
export async function removeStaleTemp(dir: string, now = Date.now()): Promise<void> {
  const tmp = path.join(dir, 'tmp');
  for (const name of await readdir(tmp).catch(() => [] as string[])) {
    const file = path.join(tmp, name);
    const st = await lstat(file).catch(() => undefined);
    if (st && now - st.mtimeMs > STALE_TEMP_MS) await rm(file, { recursive: true, force: true }).catch(() => {});
  }
}

/** Every chunk file in DIR/chunks, least recently used (oldest mtime) first. */
export async function scanChunkFiles(dir: string): Promise<Array<{ hash: string; size: number; mtime: number }>> {
  const found: Array<{ hash: string; size: number; mtime: number }> = [];
  for (const name of await readdir(path.join(dir, 'chunks'))) {
    if (!CHUNK_NAME.test(name)) continue;
    const st = await stat(path.join(dir, 'chunks', name)).catch(() => undefined);
    if (st?.isFile()) found.push({ hash: name, size: st.size, mtime: st.mtimeMs });
  }
  return found.sort((a, b) => a.mtime - b.mtime);
}

/** `size` bytes from offset 0, or undefined if the file is shorter. */
export async function readWhole(fh: FileHandle, size: number): Promise<Buffer | undefined> {
  const data = Buffer.alloc(size);
  let got = 0;
  while (got < size) {
    const { bytesRead } = await fh.read(data, got, size - got, got);
    if (bytesRead === 0) return undefined;
    got += bytesRead;
  }
  return data;
}

/** DIR/tmp then rename into DIR/chunks: complete or absent. The temporary file never outlives a failure. */
export async function writeChunkFile(dir: string, hash: string, data: Buffer): Promise<Stamp> {
  const tmp = path.join(dir, 'tmp', `${hash}.${randomBytes(4).toString('hex')}`);
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, 'wx');
    await fh.writeFile(data);
    const st = await fh.stat();
    await fh.close();
    fh = undefined;
    await rename(tmp, path.join(dir, 'chunks', hash));
    return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
  } catch (err) {
    await fh?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
}

/** `cownbd cache show`: what a cache directory holds (no server needed). */
export async function inspectCacheDir(dir: string): Promise<{ dir: string; chunks: number; bytes: number }> {
  let chunks = 0;
  let bytes = 0;
  const names = await readdir(path.join(dir, 'chunks')).catch(() => [] as string[]);
  for (const name of names) {
    if (!CHUNK_NAME.test(name)) continue;
    const st = await stat(path.join(dir, 'chunks', name)).catch(() => undefined);
    if (st?.isFile()) {
      chunks++;
      bytes += st.size;
    }
  }
  return { dir: path.resolve(dir), chunks, bytes };
}

/** `cownbd cache clear`: delete every cached chunk (a running server fetches them again). */
export async function clearCacheDir(dir: string): Promise<number> {
  const names = await readdir(path.join(dir, 'chunks')).catch(() => [] as string[]);
  let removed = 0;
  for (const name of names) {
    if (!CHUNK_NAME.test(name)) continue;
    await unlink(path.join(dir, 'chunks', name)).catch(() => {});
    removed++;
  }
  await rm(path.join(dir, 'tmp'), { recursive: true, force: true });
  return removed;
}
