/**
 * The qcow2 reader (src/formats/qcow2/) against QEMU's own reading of the same images:
 * vectors made at test time by qemu-img / qemu-io for every option the reader handles
 * (cluster sizes 512 B – 2 MiB, compat 0.10 and 1.1, extended L2 entries, deflate and zstd
 * compressed clusters, internal snapshots, qcow2 backing chains, zero clusters from
 * `write -z`, discards). For each: every byte equals `qemu-img convert -O raw`, and block
 * status equals `qemu-img map --output=json` (data / zero / unallocated, and which layer).
 * Then: headers the reader must refuse (one line naming the field and value), writes
 * refused, and a fast-check property over random write patterns and cluster sizes.
 */
import { closeSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice, Extent } from '../../src/block/block-device.js';
import { openImage } from '../../src/formats/open-image.js';
import { FileIo, readFully } from '../../src/block/file-io.js';
import { Qcow2Device } from '../../src/formats/qcow2/qcow2-device.js';
import { BoundedLru } from '../../src/formats/qcow2/qcow2-lru.js';
import { readQcow2File } from '../../src/formats/qcow2/qcow2-open.js';
import { mustSucceed, qemuImg, runTool } from '../helpers/clients.js';
import { makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import {
  makeQcow2,
  qemuIoWrites,
  randomOps,
  referenceBytes,
  referenceMap,
  runsFromExtents,
  runsFromQemuMap,
} from '../helpers/qcow2-vectors.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const hasQemu = requireTool('qemu-img') && requireTool('qemu-io');

async function allExtents(dev: BlockDevice): Promise<Extent[]> {
  const out: Extent[] = [];
  let pos = 0;
  while (pos < dev.size) {
    const got = await dev.blockStatus(pos, dev.size - pos);
    expect(got.length).toBeGreaterThan(0);
    for (const e of got) {
      out.push(e);
      pos += e.length;
    }
  }
  expect(pos).toBe(dev.size);
  return out;
}

async function readAll(file: string): Promise<{ bytes: Buffer; extents: Extent[] }> {
  const dev = await openImage(file, { readOnly: true, format: 'qcow2' });
  try {
    const bytes = Buffer.alloc(dev.size);
    // Odd-sized, unaligned requests: the reader must split and join pieces itself.
    const step = 777_777;
    await Promise.all(Array.from({ length: Math.ceil(dev.size / step) }, (_, i) => dev.read(i * step, bytes.subarray(i * step, Math.min(dev.size, (i + 1) * step)))));
    return { bytes, extents: await allExtents(dev) };
  } finally {
    await dev.close();
  }
}

/** The whole check: bytes and status equal QEMU's reading of `file`. */
async function expectLikeQemu(file: string): Promise<void> {
  const ours = await readAll(file);
  const ref = await referenceBytes(file);
  expect(ours.bytes.length).toBe(ref.length);
  // Compare by hash first (a 16 MiB diff is unreadable), then locate the first difference.
  if (!ours.bytes.equals(ref)) {
    let i = 0;
    while (ours.bytes[i] === ref[i]) i++;
    expect.fail(`${file}: first differing byte at ${i}: ours ${ours.bytes[i]}, qemu ${ref[i]}`);
  }
  expect(runsFromExtents(0, ours.extents)).toEqual(runsFromQemuMap(await referenceMap(file)));
}

interface Vector {
  readonly name: string;
  readonly size: number;
  readonly options: string;
  readonly ops: number;
  readonly maxLen?: number;
}

const VECTORS: Vector[] = [
  { name: '512 B clusters (compat 1.1)', size: 4 * MiB, options: 'cluster_size=512', ops: 30, maxLen: 32 * 1024 },
  { name: '4 KiB clusters', size: 8 * MiB, options: 'cluster_size=4096', ops: 30 },
  { name: '64 KiB clusters, compat 0.10 (version 2)', size: 8 * MiB, options: 'cluster_size=65536,compat=0.10', ops: 30 },
  { name: '64 KiB clusters, compat 1.1', size: 8 * MiB + 512 * 3, options: 'cluster_size=65536,compat=1.1', ops: 30 },
  { name: '2 MiB clusters', size: 16 * MiB, options: 'cluster_size=2097152', ops: 20, maxLen: 3 * MiB },
  { name: 'extended L2 entries, 64 KiB clusters (2 KiB subclusters)', size: 8 * MiB, options: 'extended_l2=on,cluster_size=65536', ops: 40 },
  { name: 'extended L2 entries, 16 KiB clusters (512 B subclusters)', size: 4 * MiB, options: 'extended_l2=on,cluster_size=16384', ops: 40, maxLen: 32 * 1024 },
];

describe.runIf(hasQemu)('qcow2 reader: vectors made by qemu-img / qemu-io', () => {
  let tmp: TempDir;
  beforeAll(() => {
    tmp = makeTempDir('qcow2-reader-');
  });
  afterAll(() => tmp?.cleanup());

  VECTORS.forEach((v, i) => {
    it(`${v.name}: bytes and block status equal qemu's`, async () => {
      const img = await makeQcow2(tmp.file(`v${i}.qcow2`), { size: v.size, options: v.options });
      await qemuIoWrites(img, randomOps(1000 + i, v.size, v.ops, v.maxLen));
      await expectLikeQemu(img);
    });
  });

  for (const [type, extra] of [
    ['deflate', []],
    ['zstd', ['-o', 'compression_type=zstd']],
  ] as const) {
    it(`convert -c (${type} compressed clusters), 4 KiB and 64 KiB clusters`, async () => {
      for (const cs of [4096, 65536]) {
        const src = await makeQcow2(tmp.file(`src-${type}-${cs}.qcow2`), { size: 8 * MiB, options: `cluster_size=${cs}` });
        await qemuIoWrites(src, randomOps(7 + cs, 8 * MiB, 30));
        const out = tmp.file(`c-${type}-${cs}.qcow2`);
        const opts = extra.length ? [extra[0], `${extra[1]},cluster_size=${cs}`] : ['-o', `cluster_size=${cs}`];
        mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', ...opts, src, out]));
        const check = JSON.parse(mustSucceed(await qemuImg(['check', '--output=json', '-f', 'qcow2', out])).stdout) as { 'compressed-clusters'?: number };
        expect(check['compressed-clusters']).toBeGreaterThan(0);
        await expectLikeQemu(out);
      }
    });
  }

  it('compressed 2 MiB clusters (deflate and zstd: decoded on the threadpool) read partially and concurrently', async () => {
    const src = await makeQcow2(tmp.file('src-2m.qcow2'), { size: 8 * MiB, options: 'cluster_size=2097152' });
    await qemuIoWrites(src, ['write -P 0x41 0 3M', 'write -P 0x42 5M 1M', 'write -z 7M 512k']);
    for (const type of ['zlib', 'zstd']) {
      const out = tmp.file(`c-2m-${type}.qcow2`);
      mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', `compression_type=${type},cluster_size=2097152`, src, out]));
      await expectLikeQemu(out);
    }
  });

  it('compressed clusters in an extended-L2 image (their subcluster bitmap is unused)', async () => {
    const src = await makeQcow2(tmp.file('src-extc.qcow2'), { size: 8 * MiB, options: 'extended_l2=on' });
    await qemuIoWrites(src, randomOps(41, 8 * MiB, 30));
    const out = tmp.file('extc.qcow2');
    mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', 'extended_l2=on', src, out]));
    // Then partial writes on top: extended entries with subclusters next to compressed ones.
    await qemuIoWrites(out, ['write -P 0x61 2k 2k', 'write -z 1M 6k', 'write -P 0x62 3M 100k']);
    await expectLikeQemu(out);
  });

  it('internal snapshots: the active layer (the L1 named by the header) is served', async () => {
    const img = await makeQcow2(tmp.file('snap.qcow2'), { size: 8 * MiB, options: 'cluster_size=65536' });
    await qemuIoWrites(img, ['write -P 0x01 0 2M', 'write -P 0x02 4M 1M']);
    mustSucceed(await qemuImg(['snapshot', '-c', 'one', img]));
    await qemuIoWrites(img, ['write -P 0x03 512k 1M', 'write -z 4M 64k', 'discard 6M 1M']);
    mustSucceed(await qemuImg(['snapshot', '-c', 'two', img]));
    await qemuIoWrites(img, ['write -P 0x04 7M 4k']);
    await expectLikeQemu(img);
    const ours = await readAll(img);
    expect(ours.bytes[512 * 1024]).toBe(3); // the active layer, not snapshot "one"
    expect(ours.bytes[7 * MiB]).toBe(4);
  });

  it('qcow2 over qcow2 over qcow2 (create -b … -F qcow2), unallocated clusters fall through', async () => {
    const base = await makeQcow2(tmp.file('chain0.qcow2'), { size: 8 * MiB, options: 'cluster_size=65536' });
    await qemuIoWrites(base, randomOps(31, 8 * MiB, 20));
    const mid = await makeQcow2(tmp.file('chain1.qcow2'), { size: 8 * MiB, options: 'cluster_size=4096', backing: base });
    await qemuIoWrites(mid, randomOps(32, 8 * MiB, 20));
    const top = await makeQcow2(tmp.file('chain2.qcow2'), { size: 8 * MiB, options: 'extended_l2=on', backing: mid });
    await qemuIoWrites(top, randomOps(33, 8 * MiB, 20));
    await expectLikeQemu(top);
  });

  it('a backing smaller than the image reads as zeros past its end', async () => {
    const base = await makeQcow2(tmp.file('small0.qcow2'), { size: 3 * MiB + 4096 });
    await qemuIoWrites(base, ['write -P 0x77 0 3M']);
    const top = await makeQcow2(tmp.file('small1.qcow2'), { size: 8 * MiB, backing: base });
    await qemuIoWrites(top, ['write -P 0x78 6M 64k']);
    await expectLikeQemu(top);
  });

  it('a qcow2 over a raw backing (-F raw)', async () => {
    const raw = tmp.file('base.raw');
    mustSucceed(await qemuImg(['create', '-q', '-f', 'raw', raw, String(4 * MiB)]));
    mustSucceed(await qemuImg(['convert', '-n', '-f', 'qcow2', '-O', 'raw', await makePatterned(tmp.file('pat.qcow2')), raw]));
    const top = await makeQcow2(tmp.file('overraw.qcow2'), { size: 4 * MiB, backing: raw, backingFormat: 'raw' });
    await qemuIoWrites(top, ['write -P 0x55 1M 100k']);
    const ours = await readAll(top);
    expect(ours.bytes.equals(await referenceBytes(top))).toBe(true);
  });

  it('a dirty image (lazy refcounts, writer killed) is read like qemu reads it, and not repaired', async () => {
    const img = await makeQcow2(tmp.file('dirty.qcow2'), { size: 4 * MiB, options: 'lazy_refcounts=on' });
    // qemu-io kills itself after the writes: the dirty bit stays set.
    await runTool('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 0 1M', '-c', 'write -z 2M 64k', '-c', 'sigraise 9', img]);
    const head = Buffer.alloc(8);
    const fd = openSync(img, 'r');
    readSync(fd, head, 0, 8, 72);
    closeSync(fd);
    expect(head.readBigUInt64BE() & 1n).toBe(1n);
    const before = sha256File(img);
    await expectLikeQemu(img);
    const dev = await openImage(img, { readOnly: true, format: 'qcow2' });
    expect(dev.describe().detail).toMatchObject({ dirty: true });
    await dev.close();
    expect(sha256File(img)).toBe(before);
  });

  it('opens read-only and never changes the file', async () => {
    const img = await makeQcow2(tmp.file('ro.qcow2'), { size: 4 * MiB });
    await qemuIoWrites(img, ['write -P 0x09 0 1M']);
    const before = sha256File(img);
    await expect(openImage(img, { format: 'qcow2' })).rejects.toThrow(/qcow2 images are served read-only: add -r/);
    const dev = await openImage(img, { readOnly: true, format: 'qcow2' });
    expect(dev.capabilities.writable).toBe(false);
    await expect(dev.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EPERM' });
    await expect(dev.writeZeroes(0, 512)).rejects.toMatchObject({ code: 'EPERM' });
    await dev.close();
    expect(sha256File(img)).toBe(before);
  });

  async function makePatterned(file: string): Promise<string> {
    await makeQcow2(file, { size: 4 * MiB });
    await qemuIoWrites(file, ['write -P 0x31 0 4M']);
    return file;
  }
});

/** Patch `bytes` at `offset` of `file` (a crafted header from a real one). */
function patch(file: string, offset: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}

function readU64(file: string, offset: number): bigint {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(8);
    readSync(fd, b, 0, 8, offset);
    return b.readBigUInt64BE();
  } finally {
    closeSync(fd);
  }
}

describe.runIf(hasQemu)('qcow2 reader: images it must refuse, with one line naming field and value', () => {
  let tmp: TempDir;
  let n = 0;
  beforeAll(() => {
    tmp = makeTempDir('qcow2-refuse-');
  });
  afterAll(() => tmp?.cleanup());

  async function fresh(options = 'cluster_size=65536'): Promise<string> {
    const img = await makeQcow2(tmp.file(`r${n++}.qcow2`), { size: 4 * MiB, options });
    await qemuIoWrites(img, ['write -P 0x10 0 64k']);
    return img;
  }

  async function refusal(img: string): Promise<string> {
    const err = (await openImage(img, { readOnly: true, format: 'qcow2' }).then(
      async (d) => {
        await d.close();
        return undefined;
      },
      (e: Error) => e,
    ))!;
    expect(err, `${img} was opened`).toBeInstanceOf(Error);
    expect(err.message).not.toContain('\n');
    expect(err.message).toContain(img);
    return err.message;
  }

  it('the corrupt bit', async () => {
    const img = await fresh();
    patch(img, 72, u64(readU64(img, 72) | 2n));
    expect(await refusal(img)).toMatch(/incompatible feature bit 1 \(corrupt\) is set/);
  });

  it('an incompatible feature bit cownbd does not know', async () => {
    const img = await fresh();
    patch(img, 72, u64(readU64(img, 72) | (1n << 20n)));
    expect(await refusal(img)).toMatch(/incompatible_features 0x100000 has bits cownbd does not know: 20/);
  });

  it('LUKS encryption (a real encrypted image)', async () => {
    const img = tmp.file('luks.qcow2');
    // qemu-img times its PBKDF2 on the thread's CPU clock and gives up ("Unable to get accurate
    // CPU usage") when a round measures 0 ms, which a loaded machine can produce: retry.
    const args = ['create', '-q', '--object', 'secret,id=s0,data=hunter2', '-f', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', img, '1M'];
    let made = await qemuImg(args);
    for (let i = 0; i < 4 && made.code !== 0 && /accurate CPU usage/.test(made.stderr); i++) made = await qemuImg(args);
    mustSucceed(made);
    expect(await refusal(img)).toMatch(/crypt_method 2 \(LUKS\): encrypted qcow2 images are not supported/);
  });

  it('an external data file (a real one)', async () => {
    const img = tmp.file('ext.qcow2');
    mustSucceed(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${tmp.file('ext.data')}`, img, '1M']));
    expect(await refusal(img)).toMatch(/incompatible feature bit 2 \(external data file ".*ext\.data"\) is set/);
  });

  it('version 4, cluster_bits 22 and 8, a misaligned L1 table, a short L1 table', async () => {
    let img = await fresh();
    patch(img, 4, u32(4));
    expect(await refusal(img)).toMatch(/version 4 is not supported \(2 or 3\)/);
    img = await fresh();
    patch(img, 20, u32(22));
    expect(await refusal(img)).toMatch(/cluster_bits 22 is out of range/);
    img = await fresh();
    patch(img, 20, u32(8));
    expect(await refusal(img)).toMatch(/cluster_bits 8 is out of range/);
    img = await fresh();
    patch(img, 40, u64(readU64(img, 40) + 512n));
    expect(await refusal(img)).toMatch(/l1_table_offset \d+ is not aligned to the cluster size 65536/);
    img = await fresh();
    patch(img, 24, u64(BigInt(1024 * 1024 * MiB))); // 1 TiB with a 1-entry L1 table
    expect(await refusal(img)).toMatch(/l1_size 1 is too small for size 1099511627776/);
  });

  it('a misaligned L2 entry is EIO on read naming the guest offset, not garbage', async () => {
    const img = await fresh();
    const l1 = Number(readU64(img, 40));
    const l2 = Number(readU64(img, l1) & 0x00ff_ffff_ffff_fe00n);
    patch(img, l2, u64(readU64(img, l2) + 4096n)); // guest cluster 0 → a misaligned host offset
    const dev = await openImage(img, { readOnly: true, format: 'qcow2' });
    try {
      await expect(dev.read(0, Buffer.alloc(4096))).rejects.toMatchObject({ code: 'EIO', message: expect.stringMatching(/guest offset 0 maps to host offset \d+, not aligned/) });
    } finally {
      await dev.close();
    }
  });

  it('a missing backing file: the error names the image and the backing as recorded', async () => {
    const gone = await fresh();
    const top = await makeQcow2(tmp.file('orphan.qcow2'), { size: 4 * MiB, backing: gone });
    rmSync(gone);
    const msg = await refusal(top);
    expect(msg).toContain(`cannot open backing file "${gone}"`);
    expect(msg).toMatch(/as qcow2: .*no such file/i);
  });

  it('a qcow2 backing without a recorded format needs --backing-format (never probed)', async () => {
    const base = await fresh();
    const top = await makeQcow2(tmp.file('noformat.qcow2'), { size: 4 * MiB, backing: base });
    // qemu-img no longer writes such images: turn the backing-format extension (0xe2792aca)
    // into an unknown one, which readers skip.
    const head = Buffer.alloc(4096);
    const fd = openSync(top, 'r');
    readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    const at = head.indexOf(Buffer.from('e2792aca', 'hex'));
    expect(at).toBeGreaterThanOrEqual(104);
    patch(top, at, u32(0x12345678));
    const msg = await refusal(top);
    expect(msg).toMatch(/has no recorded format .* give --backing-format \(backings are never probed\)/);
    const dev = await openImage(top, { readOnly: true, format: 'qcow2', backingFormat: 'qcow2' });
    const b = Buffer.alloc(4);
    await dev.read(0, b);
    expect(b).toEqual(Buffer.alloc(4, 0x10));
    await dev.close();
  });
});

describe('qcow2 caches stay within their byte budget', () => {
  it('BoundedLru evicts the least recently used and loads each key once', async () => {
    const lru = new BoundedLru(3 * 4096);
    let loads = 0;
    const load = (k: number) => () => {
      loads++;
      return Promise.resolve(Buffer.alloc(4096, k));
    };
    const [a, b] = await Promise.all([lru.get(1, load(1)), lru.get(1, load(1))]);
    expect(a).toBe(b);
    expect(loads).toBe(1);
    await lru.get(2, load(2));
    await lru.get(3, load(3));
    await lru.get(1, load(1)); // 1 is now young
    await lru.get(4, load(4)); // evicts 2
    expect(lru.size).toBe(3 * 4096);
    await lru.get(1, load(1));
    expect(loads).toBe(4);
    await lru.get(2, load(2));
    expect(loads).toBe(5);
    expect(lru.size).toBeLessThanOrEqual(3 * 4096);
  });
});

describe.runIf(hasQemu)('qcow2 reader: a 1 TiB image with a small L2 budget', () => {
  let tmp: TempDir;
  beforeAll(() => {
    tmp = makeTempDir('qcow2-big-');
  });
  afterAll(() => tmp?.cleanup());

  it('reads 24 clusters spread over 24 L2 tables while holding at most the budget', async () => {
    const TiB = 1024 * 1024 * MiB;
    const img = await makeQcow2(tmp.file('big.qcow2'), { size: TiB });
    // One 4 KiB write every 40 GiB: each lands in its own L2 table (one covers 512 MiB).
    const spots = Array.from({ length: 24 }, (_, i) => i * 40 * 1024 * MiB + (i % 7) * 65536);
    await qemuIoWrites(img, spots.map((at, i) => `write -P ${i + 1} ${at} 4k`));
    const file = await readQcow2File(img);
    const l1 = Buffer.alloc(file.header.l1Size * 8);
    await readFully(file.fh, file.header.l1TableOffset, l1, l1.length);
    const budget = 8 * 4096;
    const dev = new Qcow2Device({ path: img, fh: file.fh, fileLength: file.fileLength, header: file.header, l1, backing: undefined, backingPath: undefined, backingFormat: undefined, io: new FileIo(), l2CacheBytes: budget });
    try {
      for (let round = 0; round < 2; round++) {
        await Promise.all(
          spots.map(async (at, i) => {
            const b = Buffer.alloc(8192);
            await dev.read(at, b);
            expect(b.subarray(0, 4096)).toEqual(Buffer.alloc(4096, i + 1));
            expect(b.subarray(4096)).toEqual(Buffer.alloc(4096));
            expect(dev.cachedL2Bytes).toBeLessThanOrEqual(budget);
          }),
        );
      }
      // Block status over the whole TiB answers without reading unallocated L2 tables.
      const ext = await dev.blockStatus(spots[1]! - MiB, 2 * MiB);
      expect(runsFromExtents(0, ext).map((r) => r.what)).toEqual(['hole', 'data', 'hole']);
      expect(dev.cachedL2Bytes).toBeLessThanOrEqual(budget);
    } finally {
      await dev.close();
    }
  });
});

describe.runIf(hasQemu)('qcow2 reader: property over random write patterns and cluster sizes', () => {
  let tmp: TempDir;
  beforeAll(() => {
    tmp = makeTempDir('qcow2-prop-');
  });
  afterAll(() => tmp?.cleanup());

  it('every image qemu-io makes reads and maps like qemu-img', async () => {
    let run = 0;
    const layout = fc.constantFrom('cluster_size=512', 'cluster_size=4096', 'cluster_size=65536,compat=0.10', 'cluster_size=65536', 'cluster_size=2097152', 'extended_l2=on,cluster_size=32768');
    await fc.assert(
      fc.asyncProperty(layout, fc.integer({ min: 1, max: 1e9 }), fc.integer({ min: 1, max: 25 }), fc.boolean(), async (options, seed, ops, compress) => {
        const size = 4 * MiB;
        const img = await makeQcow2(tmp.file(`p${run++}.qcow2`), { size, options });
        await qemuIoWrites(img, randomOps(seed, size, ops, 512 * 1024));
        let target = img;
        if (compress) {
          target = tmp.file(`p${run++}.c.qcow2`);
          mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', options, img, target]));
        }
        await expectLikeQemu(target);
      }),
      { numRuns: 12, seed: 20_26_12_07 },
    );
  });
});
