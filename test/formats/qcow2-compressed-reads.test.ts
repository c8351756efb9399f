/**
 * Compressed qcow2 clusters read the way clients read them (qcow2-decompress.ts,
 * qcow2-device.ts; docs/qcow2-format.md "Performance"): vectors made by the real qemu-img
 * (`convert -c`, deflate and zstd), every read checked against `qemu-img convert -O raw`.
 *
 *   - whole clusters, 4 KiB pieces in order, and 4 KiB pieces at random with 32 in flight
 *     all read qemu's bytes;
 *   - random partial reads leave nothing in the decompressed-cluster cache (no garbage per
 *     request), sequential ones are cached from the second read of a cluster on;
 *   - one decoder per device is reused (on this Node), and a corrupt stream is EIO while the
 *     next good cluster still decodes (the failed decoder is replaced).
 */
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { deflateRawSync, zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileIo, readFully } from '../../src/block/file-io.js';
import { ClusterDecoder } from '../../src/formats/qcow2/qcow2-decompress.js';
import { Qcow2Device } from '../../src/formats/qcow2/qcow2-device.js';
import { readQcow2File } from '../../src/formats/qcow2/qcow2-open.js';
import { mustSucceed, qemuImg } from '../helpers/clients.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { prng, referenceBytes } from '../helpers/qcow2-vectors.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const CLUSTER = 65536;
const hasQemu = requireTool('qemu-img');

async function openDevice(img: string): Promise<Qcow2Device> {
  const file = await readQcow2File(img);
  const l1 = Buffer.alloc(file.header.l1Size * 8);
  await readFully(file.fh, file.header.l1TableOffset, l1, l1.length);
  return new Qcow2Device({ path: img, fh: file.fh, fileLength: file.fileLength, header: file.header, l1, backing: undefined, backingPath: undefined, backingFormat: undefined, io: new FileIo() });
}

describe.runIf(hasQemu)('compressed qcow2 clusters', () => {
  let tmp: TempDir;
  const images: Record<string, { img: string; want: Buffer }> = {};
  beforeAll(async () => {
    tmp = makeTempDir('qcow2-compressed-');
    // Text clusters compress; random ones are stored uncompressed by qemu-img: both kinds.
    const src = Buffer.alloc(4 * MiB);
    const rand = prng(20);
    for (let c = 0; c < src.length / CLUSTER; c++) {
      const part = src.subarray(c * CLUSTER, (c + 1) * CLUSTER);
      if (c % 3 === 2) for (let i = 0; i < part.length; i++) part[i] = Math.floor(rand() * 256);
      else part.fill(`cluster ${c} compresses well; `);
    }
    writeFileSync(tmp.file('src.raw'), src);
    for (const type of ['zlib', 'zstd']) {
      const img = tmp.file(`${type}.qcow2`);
      mustSucceed(await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${type}`, tmp.file('src.raw'), img]));
      images[type] = { img, want: Buffer.from(await referenceBytes(img)) };
    }
  });
  afterAll(() => tmp?.cleanup());

  for (const type of ['zlib', 'zstd']) {
    it(`${type}: whole clusters, 4 KiB in order and 4 KiB at random (32 in flight) read qemu's bytes`, async () => {
      const { img, want } = images[type]!;
      const dev = await openDevice(img);
      try {
        const whole = Buffer.alloc(want.length);
        for (let at = 0; at < want.length; at += CLUSTER) await dev.read(at, whole.subarray(at, at + CLUSTER));
        expect(whole.equals(want)).toBe(true);
        const seq = Buffer.alloc(want.length);
        for (let at = 0; at < want.length; at += 4096) await dev.read(at, seq.subarray(at, at + 4096));
        expect(seq.equals(want)).toBe(true);
        const rand = prng(7);
        const offsets = Array.from({ length: want.length / 4096 }, (_, i) => i * 4096).sort(() => rand() - 0.5);
        const got = Buffer.alloc(want.length);
        for (let i = 0; i < offsets.length; i += 32) {
          await Promise.all(offsets.slice(i, i + 32).map((at) => dev.read(at, got.subarray(at, at + 4096))));
        }
        expect(got.equals(want)).toBe(true);
      } finally {
        await dev.close();
      }
    });
  }

  it('random partial reads cache nothing; sequential ones are cached from the second read of a cluster', async () => {
    const { img, want } = images.zlib!;
    const dev = await openDevice(img);
    try {
      // One 4 KiB read in each compressed cluster (clusters 0, 1, 3, 4, ...): first reads only.
      const buf = Buffer.alloc(4096);
      for (let c = 0; c < want.length / CLUSTER; c++) {
        if (c % 3 === 2) continue;
        await dev.read(c * CLUSTER + 8192, buf);
        expect(buf.equals(want.subarray(c * CLUSTER + 8192, c * CLUSTER + 12288))).toBe(true);
      }
      expect(dev.cachedClusterBytes).toBe(0);
      // Reading on in cluster 0: the second partial read caches it.
      await dev.read(0, buf);
      expect(dev.cachedClusterBytes).toBe(CLUSTER);
      expect(buf.equals(want.subarray(0, 4096))).toBe(true);
    } finally {
      await dev.close();
    }
  });

  it('one decoder is reused; a corrupt stream is EIO and the next cluster still decodes', async () => {
    const text = Buffer.alloc(CLUSTER, 'reused decoder; ');
    const good = Buffer.concat([deflateRawSync(text), Buffer.alloc(100, 0xaa)]); // trailing bytes of the next cluster
    const decoder = new ClusterDecoder('zlib', CLUSTER);
    const out = Buffer.alloc(CLUSTER);
    await decoder.decode(good, out, 'test');
    expect(out.equals(text)).toBe(true);
    expect(decoder.reusesEngine).toBe(true);
    await expect(decoder.decode(Buffer.alloc(64, 0xff), out, 'test')).rejects.toMatchObject({ code: 'EIO', message: expect.stringMatching(/^test: cannot decompress zlib cluster/) });
    const short = deflateRawSync(text.subarray(0, 1000));
    await expect(decoder.decode(short, out, 'test')).rejects.toMatchObject({ code: 'EIO', message: 'test: zlib cluster decompressed to 1000 bytes, not the cluster size 65536' });
    out.fill(0);
    await decoder.decode(good, out, 'test');
    expect(out.equals(text)).toBe(true);
    decoder.drop();
    // zstd: the frame is measured, the next cluster's bytes after it are not read as a frame.
    const zstd = new ClusterDecoder('zstd', CLUSTER);
    const frame = Buffer.concat([zstdCompressSync(text), Buffer.alloc(100, 0xaa)]);
    out.fill(0);
    await zstd.decode(frame, out, 'test');
    expect(out.equals(text)).toBe(true);
    expect(zstd.reusesEngine).toBe(true);
    await expect(zstd.decode(zstdCompressSync(text.subarray(0, 1000)), out, 'test')).rejects.toMatchObject({ code: 'EIO', message: 'test: zstd cluster decompressed to 1000 bytes, not the cluster size 65536' });
    await zstd.decode(frame, out, 'test');
    expect(out.equals(text)).toBe(true);
    zstd.drop();
  });

  it('a corrupt compressed cluster in an image is EIO naming the guest offset; the others still read', async () => {
    const { img, want } = images.zlib!;
    const bad = tmp.file('bad.qcow2');
    writeFileSync(bad, readFileSync(img));
    const dev0 = await openDevice(bad);
    // Where cluster 1's compressed bytes are: overwrite them with garbage.
    const host = await compressedHost(dev0, CLUSTER);
    await dev0.close();
    const fd = openSync(bad, 'r+');
    writeSync(fd, Buffer.alloc(32, 0xff), 0, 32, host);
    closeSync(fd);
    const dev = await openDevice(bad);
    try {
      await expect(dev.read(CLUSTER, Buffer.alloc(4096))).rejects.toMatchObject({ code: 'EIO', message: expect.stringContaining(`guest offset ${CLUSTER} (compressed at ${host})`) });
      const ok = Buffer.alloc(4096);
      await dev.read(0, ok);
      expect(ok.equals(want.subarray(0, 4096))).toBe(true);
    } finally {
      await dev.close();
    }
  });
});

async function compressedHost(dev: Qcow2Device, guest: number): Promise<number> {
  const [p] = await dev.map.mapRange(guest, 4096);
  if (p?.kind !== 'compressed') throw new Error(`cluster at ${guest} is not compressed (${p?.kind})`);
  return p.host;
}
