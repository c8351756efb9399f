/**
 * A qcow2 golden image published to object storage and served to a fleet (real s3rver,
 * real CLI, real clients): `publish -f qcow2` stores the DISK the qcow2 describes (not its
 * container), and per-machine cow overlays over the s3:// base read byte-for-byte what
 * `qemu-img convert -O raw` reads from the qcow2, while each machine's writes stay its own.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, qemuImg, qemuIo, runTool } from '../helpers/clients.js';
import { makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { makeQcow2, qemuIoWrites, randomOps, referenceBytes } from '../helpers/qcow2-vectors.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { requireTool } from '../helpers/tools.js';
import { MiB, publish, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('qemu-img') && requireTool('qemu-io') && requireTool('nbdcopy');

describe.runIf(hasTools)('a compressed qcow2 golden image published to object storage', () => {
  let s3: S3TestServer;
  let tmp: TempDir;
  let golden: string;
  beforeAll(async () => {
    s3 = await startS3Server();
    tmp = makeTempDir('cownbd-qcow2-s3-');
    const src = await makeQcow2(tmp.file('src.qcow2'), { size: 8 * MiB });
    await qemuIoWrites(src, randomOps(77, 8 * MiB, 25));
    golden = tmp.file('golden.qcow2');
    mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', 'compression_type=zstd', src, golden]));
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('publish -f qcow2, then --base s3:// --overlay-dir: every machine reads the qcow2 disk, writes stay per machine', async () => {
    const before = sha256File(golden);
    const pub = await publish(s3, golden, 's3://golden/q', ['-f', 'qcow2']);
    expect(pub.uri).toMatch(/^s3:\/\/golden\/q@/);
    const want = await referenceBytes(golden);
    const srv = await serveS3(s3, ['--base', 's3://golden/q', '--overlay-dir', tmp.file('machines')], tmp.file('cache'));
    try {
      mustSucceed(await qemuIo(srv.uri('vm1'), ['write -P 0x5c 3M 128k']));
      for (const vm of ['vm1', 'vm2', 'vm3']) {
        const out = tmp.file(`${vm}.raw`);
        mustSucceed(await runTool('nbdcopy', [srv.uri(vm), out], { timeoutMs: 60_000 }));
        const got = readFileSync(out);
        const expected = Buffer.from(want);
        if (vm === 'vm1') expected.fill(0x5c, 3 * MiB, 3 * MiB + 128 * 1024);
        expect(got.equals(expected), vm).toBe(true);
      }
    } finally {
      await srv.stop();
    }
    expect(sha256File(golden)).toBe(before);
  });
});
