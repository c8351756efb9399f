/**
 * One chunk cache directory shared by two server processes (issue 21; docs/object-store.md
 * "Reading"): each keeps its own index of the files, writes complete files only (tmp/ +
 * rename) and evicts by unlinking, so what one process does under the other — replace a
 * file it verified, delete a file it was about to read, start up (and clean tmp/) while the
 * other writes — is noticed by the fstat check or the failed open, and the chunk is
 * verified or fetched again. Both serve the right bytes throughout; afterwards every file is
 * named by the SHA-256 of its bytes and nothing is left in tmp/. A process starting on the
 * directory removes only temporary files old enough to be a dead writer's, never the
 * directory another process is writing in (that made the starting server exit with
 * ENOTEMPTY, or the writer's rename fail).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { expectExportEquals, MiB, publish, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy');
const SIZE = 24 * MiB;
// Smaller than the image: both processes evict all the time, under each other.
// The store is in the test process: a longer deadline and fewer GETs keep load from being the fault.
const CACHE = ['--cache-size', '6M', '--cache-min-free', '0', '--s3-timeout', '30000', '--s3-max-gets', '4'];

describe.runIf(hasTools)('a cache directory shared by two servers', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  let img: string;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-shared-');
    img = createRawImage(tmp.file('img.raw'), SIZE, [[0, SIZE]], 61);
    await publish(s3, img, 's3://golden/shared');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('concurrent cold reads and evictions in two processes: every copy byte-exact, the cache holds only verified files', async () => {
    const cacheDir = tmp.file('cache');
    const args = ['--export', 'd=s3://golden/shared'];
    const a = await serveS3(s3, args, cacheDir, CACHE);
    let b: Awaited<ReturnType<typeof serveS3>> | undefined;
    try {
      // A reads cold while B starts on the same directory (B empties tmp/ at start-up).
      const first = [0, 1].map((i) => expectExportEquals(a.uri('d'), img, tmp.file(`a${i}.out`)));
      b = await serveS3(s3, args, cacheDir, CACHE);
      const bb = b;
      const rounds = [
        ...first,
        ...[0, 1].map((i) => expectExportEquals(bb.uri('d'), img, tmp.file(`b${i}.out`))),
        expectExportEquals(a.uri('d'), img, tmp.file('a2.out')),
      ];
      await Promise.all(rounds);
      // A second round: now each process holds entries the other has replaced or evicted.
      await Promise.all([expectExportEquals(a.uri('d'), img, tmp.file('a3.out')), expectExportEquals(bb.uri('d'), img, tmp.file('b3.out'))]);
    } catch (err) {
      // The servers' warnings say which chunk went wrong and why.
      const warnings = (srv: { stderr(): string } | undefined) => (srv?.stderr() ?? '').split('\n').filter((l) => /"level":[45]0/.test(l)).slice(0, 8).join('\n');
      throw new Error(`${(err as Error).message}\nA:\n${warnings(a)}\nB:\n${warnings(b)}`);
    } finally {
      await b?.stop();
      await a.stop();
    }
    for (const srv of [a, b!]) {
      expect(srv.stderr()).not.toContain('does not match its SHA-256'); // no bad body, no bad file served
      expect(srv.stderr()).not.toContain('"level":50');
      expect(srv.stderr()).not.toContain('[object Object]');
      const seen = (text: string) => srv.stderr().split(text).length - 1;
      // What the other process did, as this one noticed it (informative: timing decides how often).
      console.log(`pid ${srv.proc.pid}: ${seen('changed since it was verified')} replaced, ${seen('unreadable: dropped')} + ${seen('damaged or gone')} gone under it`);
    }
    const dir = path.join(cacheDir, 'chunks');
    const names = readdirSync(dir);
    for (const n of names) expect(createHash('sha256').update(readFileSync(path.join(dir, n))).digest('hex')).toBe(n);
    const bytes = names.reduce((s, n) => s + statSync(path.join(dir, n)).size, 0);
    // Each process bounds what it knows of; together at most both bounds.
    expect(bytes).toBeLessThanOrEqual(2 * 6 * MiB);
    expect(existsSync(path.join(cacheDir, 'tmp')) ? readdirSync(path.join(cacheDir, 'tmp')) : []).toEqual([]);
  }, 240_000);

  it('a server starting on the directory leaves the temporary files of a live writer alone and removes only stale ones', async () => {
    const cacheDir = tmp.file('cache-tmp');
    mkdirSync(path.join(cacheDir, 'tmp'), { recursive: true });
    // Another process's chunk being written right now, and one a writer left when it died an hour ago.
    const live = path.join(cacheDir, 'tmp', `${'a'.repeat(64)}.0badcafe`);
    const stale = path.join(cacheDir, 'tmp', `${'b'.repeat(64)}.deadbeef`);
    writeFileSync(live, Buffer.alloc(4096, 1));
    writeFileSync(stale, Buffer.alloc(4096, 2));
    const hourAgo = new Date(Date.now() - 3_600_000);
    utimesSync(stale, hourAgo, hourAgo);
    const srv = await serveS3(s3, ['--export', 'd=s3://golden/shared'], cacheDir, CACHE);
    try {
      expect(existsSync(live)).toBe(true); // its writer renames it into chunks/ in a moment
      expect(existsSync(stale)).toBe(false);
    } finally {
      await srv.stop();
    }
  }, 60_000);
});
