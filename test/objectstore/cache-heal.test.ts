/**
 * The chunk cache heals (issue 21 item 7), against the real CLI server and real clients,
 * our in-process S3 server (helpers/fault-s3-server.ts) as the store:
 *   - a cache file overwritten after it was verified is noticed, hashed again, dropped and
 *     fetched again — never served;
 *   - the whole cache directory deleted while serving (and `cache clear` on a running
 *     server) is made again and filled again;
 *   - a full cache file system (a tiny tmpfs) leaves no temporary files behind and keeps
 *     caching what fits; --cache-min-free keeps its floor.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, runTool } from '../helpers/clients.js';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { CLI_PATH } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { expectExportEquals, MiB, publish, qemuRead, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy') && requireTool('qemu-io');
const SEED = 41;
const SIZE = 8 * MiB;

function chunkName(index: number): string {
  return createHash('sha256').update(pattern(index * MiB, MiB, SEED)).digest('hex');
}

function verifiedFiles(cacheDir: string): string[] {
  const dir = path.join(cacheDir, 'chunks');
  const names = existsSync(dir) ? readdirSync(dir) : [];
  for (const n of names) expect(createHash('sha256').update(readFileSync(path.join(dir, n))).digest('hex')).toBe(n);
  return names;
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) if (cond()) return true;
  return cond();
}

/** A tmpfs of `bytes` (root only; undefined where mounting is not allowed). */
function tinyTmpfs(dir: string, bytes: number): string | undefined {
  mkdirSync(dir, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir], { stdio: 'ignore' });
    return dir;
  } catch {
    return undefined;
  }
}

describe.runIf(hasTools)('the chunk cache heals', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  let img: string;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-heal-');
    img = createRawImage(tmp.file('img.raw'), SIZE, [[0, SIZE]], SEED);
    await publish(s3, img, 's3://golden/heal');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('a cache file overwritten after it was verified is verified again and never served', async () => {
    const cacheDir = tmp.file('cache-overwrite');
    const srv = await serveS3(s3, ['--export', 'd=s3://golden/heal'], cacheDir);
    try {
      await expectExportEquals(srv.uri('d'), img, tmp.file('o1.out'));
      const file = path.join(cacheDir, 'chunks', chunkName(2));
      expect(await waitFor(() => existsSync(file))).toBe(true);
      mustSucceed(await qemuRead(srv.uri('d'), 2 * MiB, 4096)); // open and verified
      // Same inode, same size, other bytes (what a stray writer or a bad disk does).
      const bad = readFileSync(file);
      bad.fill(0xee, 0, 8192);
      writeFileSync(file, bad);
      await expectExportEquals(srv.uri('d'), img, tmp.file('o2.out'));
      expect(srv.stderr()).toContain('cached chunk file changed since it was verified');
      expect(srv.stderr()).toContain('cached chunk file is damaged or gone');
      expect(await waitFor(() => existsSync(file))).toBe(true);
      expect(verifiedFiles(cacheDir)).toContain(chunkName(2));
    } finally {
      await srv.stop();
    }
  });

  it('a cache directory deleted while serving, and `cache clear` on a running server, are healed: reads stay right and chunks are cached again', async () => {
    const cacheDir = tmp.file('cache-deleted');
    const srv = await serveS3(s3, ['--export', 'd=s3://golden/heal'], cacheDir);
    try {
      await expectExportEquals(srv.uri('d'), img, tmp.file('d1.out'));
      expect(await waitFor(() => verifiedFiles(cacheDir).length === SIZE / MiB)).toBe(true);
      rmSync(cacheDir, { recursive: true, force: true });
      await expectExportEquals(srv.uri('d'), img, tmp.file('d2.out'));
      expect(await waitFor(() => verifiedFiles(cacheDir).length === SIZE / MiB)).toBe(true);
      mustSucceed(await runTool(process.execPath, [CLI_PATH, 'cache', 'clear', '--cache-dir', cacheDir]));
      await expectExportEquals(srv.uri('d'), img, tmp.file('d3.out'));
      expect(await waitFor(() => verifiedFiles(cacheDir).length === SIZE / MiB)).toBe(true);
      // And then served from the cache, not the store.
      s3.requests.length = 0;
      await expectExportEquals(srv.uri('d'), img, tmp.file('d4.out'));
      expect(s3.requests.filter((r) => r.key.startsWith('cownbd-chunks/')).length).toBe(0);
    } finally {
      await srv.stop();
    }
  });

  it('a full cache file system leaves no temporary files and keeps caching what fits; --cache-min-free keeps its floor', async () => {
    const mnt = tinyTmpfs(tmp.file('tiny'), 3 * MiB + 512 * 1024);
    if (!mnt) return; // not allowed to mount here: nothing to test
    try {
      const cacheDir = path.join(mnt, 'cache');
      const srv = await serveS3(s3, ['--export', 'd=s3://golden/heal'], cacheDir, ['--cache-size', '64M', '--cache-min-free', '0']);
      try {
        await expectExportEquals(srv.uri('d'), img, tmp.file('f1.out'));
        await expectExportEquals(srv.uri('d'), img, tmp.file('f2.out'));
        // Cache writes finish after the reads were answered: wait for them, not a fixed time.
        expect(await waitFor(() => verifiedFiles(cacheDir).length > 0 && readdirSync(path.join(cacheDir, 'tmp')).length === 0)).toBe(true);
        expect(readdirSync(path.join(cacheDir, 'tmp'))).toEqual([]);
        const kept = verifiedFiles(cacheDir);
        expect(kept.length).toBeGreaterThan(0);
        expect(kept.length).toBeLessThanOrEqual(3);
        expect(srv.stderr()).toContain('cache file system is full');
        expect(srv.proc.exitCode).toBeNull();
      } finally {
        await srv.stop();
      }
      rmSync(cacheDir, { recursive: true, force: true });
      const floor = 2 * MiB;
      const floored = await serveS3(s3, ['--export', 'd=s3://golden/heal'], cacheDir, ['--cache-size', '64M', '--cache-min-free', String(floor)]);
      try {
        await expectExportEquals(floored.uri('d'), img, tmp.file('f3.out'));
        await new Promise((r) => setTimeout(r, 300));
        const fs = statfsSync(mnt);
        expect(fs.bavail * fs.bsize).toBeGreaterThanOrEqual(floor);
        expect(verifiedFiles(cacheDir).length).toBeGreaterThan(0);
        expect(readdirSync(path.join(cacheDir, 'tmp'))).toEqual([]);
      } finally {
        await floored.stop();
      }
    } finally {
      execFileSync('umount', [mnt]);
    }
  });
});
