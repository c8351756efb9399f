/**
 * Object-store faults against a real S3 server: the store goes away mid-run and comes back,
 * a chunk object is tampered with, the cache is smaller than the working set.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, nbdinfo, runTool } from '../helpers/clients.js';
import { CLI_PATH } from '../helpers/server.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { requireTool } from '../helpers/tools.js';
import { cacheShow, expectExportEquals, MiB, publish, qemuRead, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy') && requireTool('qemu-io') && requireTool('nbdinfo');

describe.runIf(hasTools)('object-store faults (s3rver)', () => {
  let s3: S3TestServer;
  let tmp: TempDir;
  let img: string;
  beforeAll(async () => {
    s3 = await startS3Server();
    tmp = makeTempDir('cownbd-s3-faults-');
    img = createRawImage(tmp.file('f.raw'), 16 * MiB, [[0, 16 * MiB]], 11);
    await publish(s3, img, 's3://golden/f');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('store down: cached reads work, uncached reads get EIO in bounded time, the server stays up and recovers', async () => {
    const srv = await serveS3(s3, ['--export', 'f=s3://golden/f'], tmp.file('cache-down'));
    try {
      mustSucceed(await qemuRead(srv.uri('f'), 0, 2 * MiB)); // chunks 0-1 cached
      await s3.stop();
      const cached = await qemuRead(srv.uri('f'), 0, 2 * MiB);
      expect(cached.code, cached.stderr).toBe(0);
      const started = Date.now();
      const uncached = await qemuRead(srv.uri('f'), 8 * MiB, MiB);
      expect(uncached.code).not.toBe(0);
      expect(`${uncached.stdout}${uncached.stderr}`).toMatch(/Input\/output error/);
      expect(Date.now() - started).toBeLessThan(15_000);
      // The server is alive and answers other clients.
      mustSucceed(await nbdinfo([srv.uri('f')]));
      expect(srv.proc.exitCode).toBeNull();
      await s3.start();
      const back = await qemuRead(srv.uri('f'), 8 * MiB, MiB);
      expect(back.code, back.stderr).toBe(0);
      await expectExportEquals(srv.uri('f'), img, tmp.file('down.out'));
      expect(srv.stderr()).toContain('object-store read failed');
    } finally {
      await s3.start().catch(() => {});
      await srv.stop();
    }
  });

  it('a tampered chunk object is detected: EIO and a log line, never wrong data; other chunks still read', async () => {
    const tampered = createRawImage(tmp.file('t.raw'), 4 * MiB, [[0, 4 * MiB]], 12);
    await publish(s3, tampered, 's3://golden/t');
    const hash = sha256(pattern(2 * MiB, MiB, 12));
    const dir = path.join(s3.dir, 'golden', 'cownbd-chunks', 'sha256');
    const file = path.join(dir, readdirSync(dir).find((f) => f === `${hash}._S3rver_object`)!);
    const bytes = readFileSync(file);
    bytes[12345] ^= 0xff; // same length, one bit pattern different
    writeFileSync(file, bytes);
    const srv = await serveS3(s3, ['--export', 't=s3://golden/t'], tmp.file('cache-t'));
    try {
      const bad = await qemuRead(srv.uri('t'), 2 * MiB, 4096);
      expect(bad.code).not.toBe(0);
      expect(`${bad.stdout}${bad.stderr}`).toMatch(/Input\/output error/);
      expect(srv.stderr()).toContain('does not match its SHA-256');
      mustSucceed(await qemuRead(srv.uri('t'), 0, 2 * MiB));
      mustSucceed(await qemuRead(srv.uri('t'), 3 * MiB, MiB));
      // Nothing bad was cached.
      expect((await cacheShow(tmp.file('cache-t'))).chunks).toBe(3);
    } finally {
      await srv.stop();
    }
  });

  it('a cache smaller than the working set still serves correct data and stays within its bound', async () => {
    const cacheDir = tmp.file('cache-tiny');
    const srv = await serveS3(s3, ['--export', 'f=s3://golden/f'], cacheDir, ['--cache-size', '3M']);
    try {
      await expectExportEquals(srv.uri('f'), img, tmp.file('tiny1.out'));
      await expectExportEquals(srv.uri('f'), img, tmp.file('tiny2.out'));
      // Make the last chunk the most recently used one, and wait until its file is in place.
      mustSucceed(await qemuRead(srv.uri('f'), 15 * MiB, MiB));
      const last = path.join(cacheDir, 'chunks', sha256(pattern(15 * MiB, MiB, 11)));
      for (let i = 0; i < 100 && !existsSync(last); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(last)).toBe(true);
    } finally {
      await srv.stop();
    }
    const s = await cacheShow(cacheDir);
    expect(s.bytes).toBeLessThanOrEqual(3 * MiB);
    expect(s.chunks).toBeGreaterThan(0);
    // The cache survives a restart and is used: a cached chunk is not fetched again.
    const srv2 = await serveS3(s3, ['--export', 'f=s3://golden/f'], cacheDir, ['--cache-size', '3M']);
    try {
      s3.resetStats();
      mustSucceed(await qemuRead(srv2.uri('f'), 15 * MiB, MiB));
      expect(s3.stats.chunkGets).toBe(0);
    } finally {
      await srv2.stop();
    }
    const cleared = mustSucceed(await runTool(process.execPath, [CLI_PATH, 'cache', 'clear', '--cache-dir', cacheDir]));
    expect(cleared.stdout).toMatch(/removed \d+ chunks/);
    expect((await cacheShow(cacheDir)).chunks).toBe(0);
  });
});

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
