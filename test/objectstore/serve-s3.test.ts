/**
 * Golden images in S3-compatible object storage (src/objectstore/), end to end against a
 * real S3 REST server (s3rver on 127.0.0.1) and the real CLI: publish, serve with
 * --overlay-dir / --export, two servers on one version, what a partial read fetches.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { api, waitFor } from '../control/control-helpers.js';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, nbdinfoMap, runTool } from '../helpers/clients.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { requireTool } from '../helpers/tools.js';
import { cownbd, expectExportEquals, MiB, publish, qemuRead, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy') && requireTool('qemu-io') && requireTool('nbdinfo');

describe.runIf(hasTools)('object-store base (s3rver)', () => {
  let s3: S3TestServer;
  let tmp: TempDir;
  beforeAll(async () => {
    s3 = await startS3Server();
    tmp = makeTempDir('cownbd-s3-test-');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('publish, then serve with --overlay-dir: nbdcopy equals the image, zero chunks are holes, writes stay local', async () => {
    const img = createRawImage(tmp.file('a.raw'), 24 * MiB, [[MiB + 512, 3 * MiB], [17 * MiB, 4096], [24 * MiB - 4096, 4096]], 1);
    const pub = await publish(s3, img, 's3://golden/a');
    expect(pub.uri).toMatch(/^s3:\/\/golden\/a@\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}$/);
    expect(pub.chunks).toBe(24);
    expect(pub.zeroChunks).toBe(24 - 6); // chunks 1-4, 17, 23 hold data
    expect(pub.uploadedChunks).toBe(6);
    const bucketBefore = listBucket(s3);

    const srv = await serveS3(s3, ['--base', 's3://golden/a', '--overlay-dir', tmp.file('ov')], tmp.file('cache-a'));
    try {
      await expectExportEquals(srv.uri('vm1'), img, tmp.file('a.out'));
      // The overlay pins the exact version (UML-format header, backing path = pinned address).
      const header = readFileSync(tmp.file('ov/vm1.cow')).subarray(0, 1100).toString('latin1');
      expect(header).toContain(pub.uri);
      // Skipped (zero) chunks are holes below the overlay: clients can skip them.
      const map = await nbdinfoMap(srv.uri('vm1'));
      const holeBytes = map.filter((e) => (e.type & 1) !== 0).reduce((n, e) => n + e.length, 0);
      expect(holeBytes).toBe(18 * MiB);
      // A write lands in the overlay; the bucket does not change.
      mustSucceed(await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', srv.uri('vm1')]));
      const r = mustSucceed(await runTool('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5a 0 64k', srv.uri('vm1')]));
      expect(r.stdout).not.toContain('Pattern verification failed');
    } finally {
      await srv.stop();
    }
    expect(listBucket(s3)).toEqual(bucketBefore);
  });

  it('a 1 GiB image of which a client reads 10 MiB fetches about 10 MiB', async () => {
    const img = createRawImage(tmp.file('big.raw'), 1024 * MiB, [[256 * MiB, 32 * MiB], [900 * MiB, 4 * MiB]], 2);
    const pub = await publish(s3, img, 's3://golden/big');
    expect(pub.uploadedChunks).toBe(36);
    const admin = tmp.file('admin-big.sock');
    const srv = await serveS3(s3, ['--export', 'big=s3://golden/big', '--admin', `unix:${admin}`], tmp.file('cache-big'));
    try {
      s3.resetStats();
      const r = mustSucceed(await qemuRead(srv.uri('big'), 260 * MiB, 10 * MiB));
      expect(r.stdout).toContain('read 10485760/10485760 bytes');
      expect(s3.stats.chunkGets).toBeGreaterThanOrEqual(10);
      expect(s3.stats.chunkGets).toBeLessThanOrEqual(11);
      expect(s3.stats.chunkGetBytes).toBeLessThanOrEqual(11 * MiB);
      // The server's own account (GET /metrics) agrees with the S3 server's.
      await waitFor(() => existsSync(admin), 'the admin API');
      const m = parsePrometheusTextFormat((await api({ socketPath: admin }, 'GET', '/metrics')).text);
      const value = (name: string) => Number(m.find((f) => f.name === name)?.metrics[0]?.value);
      expect(value('cownbd_s3_get_bytes')).toBeGreaterThanOrEqual(s3.stats.chunkGetBytes);
      expect(value('cownbd_s3_get_bytes')).toBeLessThanOrEqual(s3.stats.chunkGetBytes + MiB); // + the manifest
      expect(value('cownbd_chunk_cache_misses')).toBeGreaterThanOrEqual(10);
      expect(value('cownbd_s3_verify_failures')).toBe(0);
      // Read again: served from the cache, nothing fetched.
      s3.resetStats();
      mustSucceed(await qemuRead(srv.uri('big'), 260 * MiB, 10 * MiB));
      expect(s3.stats.chunkGets).toBe(0);
      // Content is right (the pattern encodes offsets).
      const out = tmp.file('slice.out');
      mustSucceed(await runTool('nbdcopy', [srv.uri('big'), out], { timeoutMs: 120_000 }));
      const got = readFileSync(out);
      expect(got.subarray(256 * MiB, 288 * MiB).equals(pattern(256 * MiB, 32 * MiB, 2))).toBe(true);
      expect(got.subarray(0, 256 * MiB).every((b) => b === 0)).toBe(true);
    } finally {
      await srv.stop();
    }
  });

  it('two cownbd processes share one bucket and one pinned version; a re-publish never changes an existing overlay', async () => {
    const v1img = createRawImage(tmp.file('s1.raw'), 8 * MiB, [[0, 8 * MiB]], 3);
    const v1 = await publish(s3, v1img, 's3://golden/shared');
    const servers = await Promise.all([
      serveS3(s3, ['--export', `d=${v1.uri}`], tmp.file('cache-p1')),
      serveS3(s3, ['--base', 's3://golden/shared', '--overlay-dir', tmp.file('ov-shared')], tmp.file('cache-p2')),
    ]);
    try {
      await expectExportEquals(servers[0].uri('d'), v1img, tmp.file('p1.out'));
      await expectExportEquals(servers[1].uri('vm1'), v1img, tmp.file('p2.out'));
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
    }
    // Version 2 under the same name: vm1 keeps v1 (pinned in its header), a new vm2 gets v2.
    const v2img = createRawImage(tmp.file('s2.raw'), 8 * MiB, [[0, 8 * MiB]], 4);
    const v2 = await publish(s3, v2img, 's3://golden/shared');
    expect(v2.version > v1.version).toBe(true);
    const srv = await serveS3(s3, ['--base', 's3://golden/shared', '--overlay-dir', tmp.file('ov-shared')], tmp.file('cache-p2'));
    try {
      await expectExportEquals(srv.uri('vm1'), v1img, tmp.file('p3.out'));
      await expectExportEquals(srv.uri('vm2'), v2img, tmp.file('p4.out'));
    } finally {
      await srv.stop();
    }
  });

  it('publish is resumable and stores identical chunks once (within an image, across images and versions)', async () => {
    // 8 chunks, chunks 0-3 identical: 5 distinct data chunks.
    const img = tmp.file('dup.raw');
    const same = pattern(0, MiB, 9);
    writeFileSync(img, Buffer.concat([same, same, same, same, pattern(4 * MiB, 4 * MiB, 5)]));
    const first = await publish(s3, img, 's3://golden/dup');
    expect(first.uploadedChunks).toBe(5);
    expect(first.presentChunks).toBe(3);
    // An interrupted publish left only some chunks: delete 2 of them, publish again.
    const chunkDir = path.join(s3.dir, 'golden', 'cownbd-chunks', 'sha256');
    const mine = readdirSync(chunkDir).filter((f) => f.endsWith('._S3rver_object'));
    const victims = [sha(same), sha(pattern(4 * MiB, MiB, 5))];
    for (const h of victims) expect(mine).toContain(`${h}._S3rver_object`);
    for (const h of victims) mustSucceed(await runTool('rm', ['-f', ...readdirSync(chunkDir).filter((f) => f.startsWith(h)).map((f) => path.join(chunkDir, f))]));
    const again = await publish(s3, img, 's3://golden/dup');
    expect(again.uploadedChunks).toBe(2);
    expect(again.presentChunks).toBe(6);
    expect(again.version).not.toBe(first.version);
    // Another image sharing all but one chunk: one upload.
    const other = tmp.file('dup2.raw');
    const data = readFileSync(img);
    pattern(7 * MiB, MiB, 77).copy(data, 7 * MiB);
    writeFileSync(other, data);
    const third = await publish(s3, other, 's3://golden/dup-other');
    expect(third.uploadedChunks).toBe(1);
    // Both versions of "dup" are listed by info and read back right.
    const info = mustSucceed(await cownbd(s3, ['info', 's3://golden/dup', '--json']));
    const doc = JSON.parse(info.stdout) as { versions: string[]; virtualSize: number };
    expect(doc.versions).toEqual([first.version, again.version]);
    expect(doc.virtualSize).toBe(8 * MiB);
  });
});

function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Every object file of the test server (names and sizes). */
function listBucket(s3: S3TestServer): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(`${path.relative(s3.dir, p)}:${readFileSync(p).length}`);
    }
  };
  walk(s3.dir);
  return out.sort();
}
