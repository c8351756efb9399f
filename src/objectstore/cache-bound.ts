/**
 * The bound a chunk cache directory is kept to, as the server using it recorded it, so that
 * `cownbd cache show` (another process, with its own defaults) reports the running server's
 * --cache-size instead of its own default (issue 24).
 *
 *   DIR/server.json   {"pid", "maxBytes", "minFreeBytes", "startedAt"}, written when a
 *                     server opens the cache (tmp file + rename: whole or absent)
 *
 * A record outlives its server (it says what the last one used); whether that pid is still
 * a cownbd process is judged when the record is read (kill 0, then /proc/PID/cmdline, which
 * a cownbd process sets to "cownbd"). Several servers sharing one directory: the last one
 * to start wins the record (each keeps its own bound in memory).
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import path from 'node:path';

export interface CacheBoundRecord {
  readonly pid: number;
  readonly maxBytes: number;
  readonly minFreeBytes: number;
  readonly startedAt: string;
}

const FILE = 'server.json';

export async function recordCacheBound(dir: string, r: CacheBoundRecord): Promise<void> {
  const tmp = path.join(dir, `.${FILE}.${process.pid}.tmp`);
  await writeFile(tmp, `${JSON.stringify(r)}\n`);
  await rename(tmp, path.join(dir, FILE));
}

/** The record, if a server left a readable one, and whether that server still runs. */
export async function readCacheBound(dir: string): Promise<(CacheBoundRecord & { running: boolean }) | undefined> {
  let r: Partial<CacheBoundRecord>;
  try {
    r = JSON.parse(await readFile(path.join(dir, FILE), 'utf8')) as Partial<CacheBoundRecord>;
  } catch {
    return undefined;
  }
  if (!Number.isSafeInteger(r.pid) || !Number.isSafeInteger(r.maxBytes)) return undefined;
  const rec = { pid: r.pid!, maxBytes: r.maxBytes!, minFreeBytes: r.minFreeBytes ?? 0, startedAt: r.startedAt ?? '' };
  return { ...rec, running: isCownbd(rec.pid) };
}

function isCownbd(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // A reused pid is another program: a cownbd process titles itself "cownbd" (cli/main.ts).
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').startsWith('cownbd');
  } catch {
    return true;
  }
}
