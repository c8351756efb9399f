/**
 * Overlays pinned to one version while newer versions are published (issue 21 item 4):
 * an overlay advertises its own size — the version it was made over — never the size of
 * the newer version the restarted server's --base now resolves to. Real CLI server, real
 * clients, our in-process S3 server (helpers/fault-s3-server.ts, no faults injected).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, nbdinfoJson, runTool } from '../helpers/clients.js';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { MiB, publish, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy') && requireTool('qemu-io') && requireTool('nbdinfo');

describe.runIf(hasTools)('overlays over an older version after a bigger one is published', () => {
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
});
