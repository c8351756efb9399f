/**
 * Overlays pinned to one version while newer versions are published (issue 21 item 4), and
 * `check` of overlays over s3:// bases (item 6), and `rebase` between two versions (item 8):
 * an overlay advertises its own size — the version it was made over — never the size of
 * the newer version the restarted server's --base now resolves to. Real CLI server, real
 * clients, our in-process S3 server (helpers/fault-s3-server.ts, no faults injected).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, nbdinfoJson, runTool } from '../helpers/clients.js';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { cownbd, MiB, publish, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy') && requireTool('qemu-io') && requireTool('nbdinfo');

describe.runIf(hasTools)('overlays over s3:// versions', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-versions-');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('an existing overlay keeps its size (INFO and GO), reads to its end and writes work; a new overlay gets the new size', async () => {
    const v1 = createRawImage(tmp.file('v1.raw'), 4 * MiB, [[0, 4 * MiB]], 31);
    const v2 = createRawImage(tmp.file('v2.raw'), 8 * MiB, [[0, 8 * MiB]], 32);
    const args = ['--base', 's3://golden/grow', '--overlay-dir', tmp.file('ov')];
    const cacheDir = tmp.file('cache');
    await publish(s3, v1, 's3://golden/grow');
    const first = await serveS3(s3, args, cacheDir);
    try {
      mustSucceed(await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', first.uri('vm1')]));
    } finally {
      await first.stop();
    }
    await publish(s3, v2, 's3://golden/grow');
    const srv = await serveS3(s3, args, cacheDir);
    try {
      expect((await nbdinfoJson(srv.uri('vm1'))).exports[0]!['export-size']).toBe(4 * MiB);
      expect((await nbdinfoJson(srv.uri('vm2'))).exports[0]!['export-size']).toBe(8 * MiB);
      // The last sector of the old size reads and writes; the whole disk is V1 plus the write.
      mustSucceed(await runTool('qemu-io', ['-f', 'raw', '-c', `write -P 0x66 ${4 * MiB - 4096} 4096`, srv.uri('vm1')]));
      mustSucceed(await runTool('nbdcopy', [srv.uri('vm1'), tmp.file('vm1.out')]));
      const want = Buffer.from(readFileSync(v1));
      want.fill(0x5a, 0, 65536);
      want.fill(0x66, 4 * MiB - 4096);
      const got = readFileSync(tmp.file('vm1.out'));
      expect(got.length).toBe(4 * MiB);
      expect(got.equals(want)).toBe(true);
      mustSucceed(await runTool('nbdcopy', [srv.uri('vm2'), tmp.file('vm2.out')]));
      expect(readFileSync(tmp.file('vm2.out')).equals(readFileSync(v2))).toBe(true);
    } finally {
      await srv.stop();
    }
  });

  it('check understands s3:// backings: clean when the pinned version exists or is cached, could-not-check (1) when unreachable and uncached, corrupt (2) when it is gone', async () => {
    const base = createRawImage(tmp.file('chk.raw'), 2 * MiB, [[0, 2 * MiB]], 33);
    const pub = await publish(s3, base, 's3://golden/chk');
    const cow = tmp.file('chk.cow');
    mustSucceed(await cownbd(s3, ['create', '-f', 'cow', '-b', 's3://golden/chk', cow, '--cache-dir', tmp.file('chk-cache')]));
    const check = async (cacheDir: string) => {
      const r = await cownbd(s3, ['check', cow, '--json', '--cache-dir', cacheDir]);
      return { code: r.code, doc: JSON.parse(r.stdout || r.stderr || '{}') as { result?: string; error?: string | null; findings?: Array<{ message: string }> }, r };
    };
    const clean = await check(tmp.file('chk-cache'));
    expect(clean.code, JSON.stringify(clean.doc)).toBe(0);
    expect(clean.doc.result).toBe('clean');
    await s3.stop();
    try {
      const cached = await check(tmp.file('chk-cache')); // the manifest create fetched is on disk
      expect(cached.code, JSON.stringify(cached.doc)).toBe(0);
      const unreachable = await check(tmp.file('chk-empty'));
      expect(unreachable.code, JSON.stringify(unreachable.doc)).toBe(1);
      expect(String(unreachable.doc.error)).toContain('cannot be reached');
    } finally {
      await s3.start();
    }
    s3.inject({ key: `chk/manifests/${pub.version}.json`, fault: { kind: 'status', status: 404 }, times: Infinity });
    try {
      const gone = await check(tmp.file('chk-empty2'));
      expect(gone.code, JSON.stringify(gone.doc)).toBe(2);
      expect(JSON.stringify(gone.doc.findings)).toContain('not found');
    } finally {
      s3.clearFaults();
    }
  });

  it('rebase moves an overlay from version A to version B of an image: the view stays A, the header pins B, only chunks that differ are copied', async () => {
    const a = createRawImage(tmp.file('ra.raw'), 4 * MiB, [[0, 4 * MiB]], 81);
    const bImg = createRawImage(tmp.file('rb.raw'), 4 * MiB, [[0, 4 * MiB]], 81);
    writeFileSync(bImg, pattern(MiB, MiB, 82), { flag: 'r+' }); // chunk 0 changes (written at 0)
    const va = (await publish(s3, a, 's3://golden/rb')).version;
    const vb = (await publish(s3, bImg, 's3://golden/rb')).version;
    const cow = tmp.file('rb.cow');
    const cache = ['--cache-dir', tmp.file('rb-cache')];
    mustSucceed(await cownbd(s3, ['create', '-f', 'cow', '-b', `s3://golden/rb@${va}`, cow, ...cache]));
    const r = mustSucceed(await cownbd(s3, ['rebase', '-b', 's3://golden/rb', cow, '--json', ...cache]));
    const doc = JSON.parse(r.stdout) as { bytesCopied: number; storedBacking: string };
    expect(doc.storedBacking).toBe(`s3://golden/rb@${vb}`);
    expect(doc.bytesCopied).toBe(MiB);
    expect(readFileSync(cow).subarray(0, 1100).toString('latin1')).toContain(`s3://golden/rb@${vb}`);
    mustSucceed(await cownbd(s3, ['convert', cow, '-O', 'raw', tmp.file('rb.out'), ...cache]));
    expect(readFileSync(tmp.file('rb.out')).equals(readFileSync(a))).toBe(true);
    expect((await cownbd(s3, ['check', cow, ...cache])).code).toBe(0);
  });
});
