/**
 * Overlays and image tools over an s3:// base (real s3rver, real CLI): create -f cow|add-cow
 * pins the version in the overlay, info/map understand it, serve --ephemeral works over it,
 * convert/rebase turn the chain into local files that UML's uml_moo accepts, NBD_CMD_CACHE
 * prefetches, and concurrent reads of one missing chunk fetch it once.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, runTool } from '../helpers/clients.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython } from '../helpers/server.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { requireTool } from '../helpers/tools.js';
import { cownbd, expectExportEquals, MiB, publish, serveS3, type Published } from './s3-helpers.js';

const hasTools = requireTool('nbdcopy') && requireTool('qemu-io') && requireTool('uml_moo') && requireNbdPython();

describe.runIf(hasTools)('tools and overlays over an s3:// base (s3rver)', () => {
  let s3: S3TestServer;
  let tmp: TempDir;
  let img: string;
  let pub: Published;
  beforeAll(async () => {
    s3 = await startS3Server();
    tmp = makeTempDir('cownbd-s3-tools-');
    img = createRawImage(tmp.file('g.raw'), 8 * MiB, [[0, 2 * MiB], [5 * MiB, MiB]], 21);
    pub = await publish(s3, img, 's3://golden/g');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('create -f cow over s3:// pins the version; info and map describe it; convert and rebase make UML-usable local files', async () => {
    const cow = tmp.file('vm.cow');
    mustSucceed(await cownbd(s3, ['create', '-f', 'cow', '-b', 's3://golden/g', cow, '--cache-dir', tmp.file('c1')]));
    expect(readFileSync(cow).subarray(0, 1100).toString('latin1')).toContain(pub.uri);
    const info = JSON.parse(mustSucceed(await cownbd(s3, ['info', cow, '--json', '--cache-dir', tmp.file('c1')])).stdout);
    expect(info.backing).toMatchObject({ stored: pub.uri, exists: true, sizeCheck: 'ok', mtimeCheck: 'ok', size: 8 * MiB });
    const s3info = mustSucceed(await cownbd(s3, ['info', 's3://golden/g']));
    expect(s3info.stdout).toContain(`image: ${pub.uri}`);
    expect(s3info.stdout).toMatch(/chunks: 8: 3 stored/);
    const map = JSON.parse(mustSucceed(await cownbd(s3, ['map', 's3://golden/g', '--json', '--cache-dir', tmp.file('c1')])).stdout);
    expect(map.extents.map((e: { start: number; length: number; zero: boolean }) => [e.start / MiB, e.length / MiB, e.zero])).toEqual([
      [0, 2, false],
      [2, 3, true],
      [5, 1, false],
      [6, 2, true],
    ]);

    // Serve the overlay (a local file whose backing is s3://), write through NBD.
    const srv = await serveS3(s3, [cow, '-n', 'vm'], tmp.file('c1'));
    try {
      mustSucceed(await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 1M 64k', srv.uri('vm')]));
    } finally {
      await srv.stop();
    }
    const want = readFileSync(img);
    want.fill(0x77, MiB, MiB + 65536);
    // Flatten to a raw file.
    mustSucceed(await cownbd(s3, ['convert', cow, '-O', 'raw', tmp.file('flat.raw'), '--cache-dir', tmp.file('c1')]));
    expect(readFileSync(tmp.file('flat.raw')).equals(want)).toBe(true);
    // Or fetch the base and rebase the overlay onto it: then uml_moo merges it like any UML cow.
    const base = await serveS3(s3, ['--export', `base=${pub.uri}`], tmp.file('c1'));
    try {
      mustSucceed(await runTool('nbdcopy', [base.uri('base'), tmp.file('base.raw')]));
    } finally {
      await base.stop();
    }
    mustSucceed(await cownbd(s3, ['rebase', '-b', tmp.file('base.raw'), cow, '--cache-dir', tmp.file('c1')]));
    mustSucceed(await runTool('uml_moo', [cow, tmp.file('moo.raw')]));
    expect(readFileSync(tmp.file('moo.raw')).equals(want)).toBe(true);
  });

  it('create -f add-cow over s3:// and serve it', async () => {
    const meta = tmp.file('vm.add-cow');
    mustSucceed(await cownbd(s3, ['create', '-f', 'add-cow', '--image', tmp.file('vm.img'), '-b', 's3://golden/g', meta, '--cache-dir', tmp.file('c2')]));
    expect(readFileSync(meta).toString('latin1')).toContain(pub.uri);
    const srv = await serveS3(s3, [meta, '-n', 'vm'], tmp.file('c2'));
    try {
      await expectExportEquals(srv.uri('vm'), img, tmp.file('ac.out'));
    } finally {
      await srv.stop();
    }
  });

  it('serve --ephemeral over s3://: every connection starts from the published image', async () => {
    const srv = await serveS3(s3, ['--ephemeral', 's3://golden/g', '--ephemeral-dir', tmp.file('eph')], tmp.file('c3'));
    try {
      mustSucceed(await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', srv.uri('')]));
      await expectExportEquals(srv.uri(''), img, tmp.file('eph.out'));
    } finally {
      await srv.stop();
    }
  });

  it('NBD_CMD_CACHE prefetches the range; concurrent reads of one missing chunk fetch it once', async () => {
    const srv = await serveS3(s3, ['--export', 'g=s3://golden/g'], tmp.file('c4'));
    try {
      s3.resetStats();
      await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
assert h.can_cache()
h.cache(2 * 1024 * 1024, 0)
`, { URI: srv.uri('g') });
      expect(s3.stats.chunkGets).toBe(2);
      s3.resetStats();
      const out = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
bufs = [nbd.Buffer(4096) for _ in range(8)]
cookies = [h.aio_pread(b, 5 * 1024 * 1024 + i * 65536) for i, b in enumerate(bufs)]
while h.aio_in_flight() > 0:
    h.poll(-1)
print(all(b.to_bytearray() == bytearray(PAT[i]) for i, b in enumerate(bufs)))
`, { URI: srv.uri('g'), PAT: Array.from({ length: 8 }, (_, i) => [...pattern(5 * MiB + i * 65536, 4096, 21)]) });
      expect(out.trim()).toBe('True');
      expect(s3.stats.chunkGets).toBe(1);
      // Cached: reading the prefetched range fetches nothing.
      s3.resetStats();
      mustSucceed(await runTool('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0 2M 1M', srv.uri('g')]));
      mustSucceed(await runTool('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 2M', srv.uri('g')]));
      expect(s3.stats.chunkGets).toBe(0);
    } finally {
      await srv.stop();
    }
  });
});
