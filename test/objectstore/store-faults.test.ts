/**
 * The faults real object stores produce, injected per request by our own S3-compatible
 * server (helpers/fault-s3-server.ts), against the real CLI server and real NBD clients
 * (issue 21 items 1-2): a transient fault is retried and the client gets the right bytes;
 * a permanent one is EIO in bounded time; never a wrong byte, the server stays up, the cache
 * holds only verified chunks, and reads work again once the fault stops.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, nbdinfo } from '../helpers/clients.js';
import { startFaultS3Server, type Fault, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { expectExportEquals, MiB, publish, qemuRead, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy') && requireTool('qemu-io') && requireTool('nbdinfo');
const SEED = 21;
const SIZE = 24 * MiB;
// serveS3 runs the server with --s3-timeout 3000 --s3-retries 2: three attempts of at most 1 s.
const DEADLINE_MS = 3000;

function chunkKey(index: number): string {
  return `cownbd-chunks/sha256/${createHash('sha256').update(pattern(index * MiB, MiB, SEED)).digest('hex')}`;
}

/** Every file in the cache is named by the SHA-256 of its bytes (nothing unverified was kept). */
function expectCacheClean(cacheDir: string): number {
  const dir = path.join(cacheDir, 'chunks');
  const names = readdirSync(dir);
  for (const name of names) expect(createHash('sha256').update(readFileSync(path.join(dir, name))).digest('hex')).toBe(name);
  return names.length;
}

/** Every line the server wrote is a JSON log record (no plain-text SDK warnings). */
function expectJsonLog(stderr: string): Array<Record<string, unknown>> {
  return stderr
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('cownbd: listening'))
    .map((l) => {
      expect(() => JSON.parse(l), `not a JSON log line: ${l}`).not.toThrow();
      return JSON.parse(l) as Record<string, unknown>;
    });
}

describe.runIf(hasTools)('object-store faults injected per request', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  let img: string;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-inject-');
    img = createRawImage(tmp.file('img.raw'), SIZE, [[0, SIZE]], SEED);
    await publish(s3, img, 's3://golden/img');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('transient faults (once each) are retried: the whole disk reads byte-exact, the cache holds only verified chunks', async () => {
    const transient: Fault[] = [
      { kind: 'status', status: 503 },
      { kind: 'status', status: 500 },
      { kind: 'status', status: 404 },
      { kind: 'reset' },
      { kind: 'short' },
      { kind: 'flip' },
      { kind: 'other' },
      { kind: 'delay', ms: 2500 },
      { kind: 'trickle', bytesPerSecond: 16 * 1024 },
    ];
    s3.requests.length = 0;
    const rules = transient.map((fault, i) => s3.inject({ key: chunkKey(i), fault, times: 1 }));
    const cacheDir = tmp.file('cache-transient');
    const srv = await serveS3(s3, ['--export', 'img=s3://golden/img'], cacheDir);
    try {
      await expectExportEquals(srv.uri('img'), img, tmp.file('transient.out'));
      for (const [i, r] of rules.entries()) {
        expect(r.hits, `fault ${r.fault.kind} on chunk ${i}`).toBe(1);
        expect(s3.getsOf(chunkKey(i)), `GETs of chunk ${i} (${r.fault.kind})`).toBeGreaterThanOrEqual(2);
      }
      expect(srv.proc.exitCode).toBeNull();
      const log = expectJsonLog(srv.stderr());
      expect(log.some((l) => l.msg === 'object-store attempt failed, retrying')).toBe(true);
      expect(log.some((l) => l.msg === 'object-store read failed')).toBe(false);
    } finally {
      s3.clearFaults();
      await srv.stop();
    }
    expect(expectCacheClean(cacheDir)).toBe(SIZE / MiB);
  });

  it('permanent faults are EIO in bounded time, never wrong bytes; 403 is not retried; the server stays up and reads work once the fault stops', async () => {
    const permanent: Fault[] = [
      { kind: 'status', status: 500 },
      { kind: 'status', status: 403 },
      { kind: 'status', status: 404 },
      { kind: 'reset' },
      { kind: 'short' },
      { kind: 'flip' },
      { kind: 'other' },
      { kind: 'delay', ms: 60_000 },
      { kind: 'trickle', bytesPerSecond: 16 * 1024 },
    ];
    const first = 10; // chunks 10.. (not read by anything else in this test)
    s3.requests.length = 0; // count this test's GETs only
    for (const [i, fault] of permanent.entries()) s3.inject({ key: chunkKey(first + i), fault, times: Infinity });
    const cacheDir = tmp.file('cache-permanent');
    const srv = await serveS3(s3, ['--export', 'img=s3://golden/img'], cacheDir);
    try {
      const results = await Promise.all(
        permanent.map(async (fault, i) => {
          const started = Date.now();
          const r = await qemuRead(srv.uri('img'), (first + i) * MiB + 4096, 4096);
          return { fault, r, ms: Date.now() - started };
        }),
      );
      for (const { fault, r, ms } of results) {
        expect(r.code, `${fault.kind} ${JSON.stringify(fault)}: ${r.stdout}`).not.toBe(0);
        expect(`${r.stdout}${r.stderr}`).toMatch(/Input\/output error/);
        // Deadline plus the client's own start-up; far below qemu's or a guest's patience.
        expect(ms, `${fault.kind}`).toBeLessThan(DEADLINE_MS + 7000);
      }
      // 403 is an answer, not a glitch: asked once.
      expect(s3.getsOf(chunkKey(first + 1))).toBe(1);
      // 500 was retried (three attempts).
      expect(s3.getsOf(chunkKey(first))).toBe(3);
      const log = expectJsonLog(srv.stderr());
      expect(log.some((l) => String(l.err).includes('HTTP 403 access denied'))).toBe(true);
      expect(log.some((l) => String(l.msg).includes('does not match its SHA-256'))).toBe(true);
      // The server is up and answers; nothing unverified reached the cache.
      expect(srv.proc.exitCode).toBeNull();
      mustSucceed(await nbdinfo([srv.uri('img')]));
      expectCacheClean(cacheDir);
      for (let i = 0; i < permanent.length; i++) expect(readdirSync(path.join(cacheDir, 'chunks'))).not.toContain(chunkKey(first + i).split('/').pop());
      // The fault stops: the same reads now succeed and the disk is byte-exact.
      s3.clearFaults();
      await expectExportEquals(srv.uri('img'), img, tmp.file('permanent.out'));
    } finally {
      s3.clearFaults();
      await srv.stop();
    }
    expect(expectCacheClean(cacheDir)).toBe(SIZE / MiB);
  });

  it('store outage: a warm server keeps serving, a client reconnects, a new overlay opens, and restarted servers serve cached data', async () => {
    const out = createRawImage(tmp.file('out.raw'), 8 * MiB, [[0, 8 * MiB]], SEED + 1);
    await publish(s3, out, 's3://golden/out');
    const cacheDir = tmp.file('cache-outage');
    const ov = tmp.file('ov-outage');
    const overlayArgs = ['--base', 's3://golden/out', '--overlay-dir', ov];
    const exportArgs = ['--export', 'out=s3://golden/out'];
    const srv = await serveS3(s3, overlayArgs, cacheDir);
    try {
      await expectExportEquals(srv.uri('vm1'), out, tmp.file('warm.out')); // every chunk cached
      await s3.stop();
      // Reconnect to the same machine, and a machine seen for the first time: both open.
      await expectExportEquals(srv.uri('vm1'), out, tmp.file('reconnect.out'));
      await expectExportEquals(srv.uri('vm2'), out, tmp.file('new-overlay.out'));
      await srv.stop();
      // Restarts with the store still down: --base (newest version, resolved from the disk
      // cache) with its existing overlays, and an --export of the same image.
      const again = await serveS3(s3, overlayArgs, cacheDir);
      try {
        await expectExportEquals(again.uri('vm1'), out, tmp.file('restart-overlay.out'));
        expect(again.stderr()).toContain('using the newest version cached on this machine');
      } finally {
        await again.stop();
      }
      const exp = await serveS3(s3, exportArgs, cacheDir);
      try {
        await expectExportEquals(exp.uri('out'), out, tmp.file('restart-export.out'));
        await expectExportEquals(exp.uri('out'), out, tmp.file('restart-export2.out'));
      } finally {
        await exp.stop();
      }
    } finally {
      await srv.stop();
      await s3.start();
    }
  });

  it('a damaged manifest file in the cache is dropped and fetched again, never used', async () => {
    const cacheDir = tmp.file('cache-manifest');
    const first = await serveS3(s3, ['--export', 'img=s3://golden/img'], cacheDir);
    try {
      mustSucceed(await qemuRead(first.uri('img'), 0, 4096));
    } finally {
      await first.stop();
    }
    const dir = path.join(cacheDir, 'manifests');
    const [id] = readdirSync(dir);
    const [name] = readdirSync(path.join(dir, id!));
    const file = path.join(dir, id!, name!);
    expect(name).toMatch(/\.cmf$/); // the compact form (docs/object-store.md)
    const bytes = readFileSync(file);
    // One bit of the last chunk's hash: another valid-looking hash, wrong content.
    bytes[bytes.length - 40]! ^= 1;
    writeFileSync(file, bytes);
    s3.requests.length = 0;
    const second = await serveS3(s3, ['--export', 'img=s3://golden/img'], cacheDir);
    try {
      await expectExportEquals(second.uri('img'), img, tmp.file('manifest-heal.out'));
      expect(second.stderr()).toContain('cached manifest is damaged');
      expect(s3.requests.some((r) => r.method === 'GET' && r.key.includes('/manifests/'))).toBe(true);
    } finally {
      await second.stop();
    }
  });
});
