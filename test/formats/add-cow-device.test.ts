/**
 * add-cow device behaviour that the generic model cannot see: what lands in the image
 * and .add-cow files (COW-fill, bitmap bits and their timing), concurrency on one
 * unallocated cluster, the image end, ALL_ALLOCATED, recorded (never probed) formats,
 * name resolution and identity refusals, and block status depths.
 */
import { linkSync, readFileSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { EXTENT_HOLE, EXTENT_ZERO, type BlockDevice } from '../../src/block/block-device.js';
import { nativeFs } from '../../src/block/native-fs.js';
import { AddCowDevice } from '../../src/formats/add-cow/index.js';
import { createAddCow, openImage } from '../../src/formats/open-image.js';
import { craftAddCow, writeCraftedAddCow } from '../helpers/add-cow-craft.js';
import { createPatternedImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';

const KiB = 1024;
const MiB = 1024 * KiB;
let dir: TempDir;
const open: BlockDevice[] = [];

async function openAc(file: string, opts: Parameters<typeof openImage>[1] = {}): Promise<BlockDevice> {
  const dev = await openImage(file, opts);
  open.push(dev);
  return dev;
}

/** Bitmap byte `i` as it is ON DISK right now. */
function diskBitmapByte(file: string, headerSize: number, i: number): number {
  return readFileSync(file)[headerSize + i] ?? 0;
}

function setup(backingSize = MiB, clusterSize = 64 * KiB, size?: number): Promise<void> {
  dir = makeTempDir('addcow-dev-');
  createPatternedImage(dir.file('base.img'), backingSize, 1);
  return createAddCow(dir.file('ov.add-cow'), {
    imageFile: 'disk.img',
    backingFile: 'base.img',
    clusterSize,
    ...(size !== undefined ? { size } : {}),
  });
}

afterEach(async () => {
  for (const d of open.splice(0)) await d.close().catch(() => {});
  dir?.cleanup();
});

describe('add-cow writes', () => {
  it('COW-fills the uncovered head and tail of a partially written cluster from the backing file', async () => {
    await setup();
    const dev = await openAc(dir.file('ov.add-cow'));
    const data = Buffer.alloc(1000, 0xee);
    await dev.write(65536 + 3000, data);
    await dev.flush();
    const image = readFileSync(dir.file('disk.img'));
    const expected = pattern(65536, 65536, 1);
    data.copy(expected, 3000);
    expect(image.subarray(65536, 131072).equals(expected)).toBe(true);
    // Nothing outside cluster 1 was written to the image (it stays a hole/zeros).
    expect(image.subarray(0, 65536).every((b) => b === 0)).toBe(true);
    expect(image.subarray(131072, 196608).every((b) => b === 0)).toBe(true);
    expect(diskBitmapByte(dir.file('ov.add-cow'), 65536, 0)).toBe(0b10);
  });

  it('keeps bitmap bits in memory until FLUSH, then persists them (data first)', async () => {
    await setup(MiB, 4096);
    const dev = await openAc(dir.file('ov.add-cow'));
    await dev.write(4096 * 9, Buffer.alloc(4096, 1));
    expect(diskBitmapByte(dir.file('ov.add-cow'), 4096, 1)).toBe(0);
    await dev.flush();
    expect(diskBitmapByte(dir.file('ov.add-cow'), 4096, 1)).toBe(0b10);
  });

  it('a FUA write is durable (bit on disk) when it resolves', async () => {
    await setup(MiB, 4096);
    const dev = await openAc(dir.file('ov.add-cow'));
    await dev.write(4096 * 3 + 10, Buffer.alloc(10, 1), { fua: true });
    expect(diskBitmapByte(dir.file('ov.add-cow'), 4096, 0)).toBe(0b1000);
  });

  it('concurrent partial writes to one unallocated cluster lose nothing', async () => {
    await setup(MiB, 64 * KiB);
    const dev = await openAc(dir.file('ov.add-cow'));
    const base = 128 * KiB;
    const pieces = Array.from({ length: 32 }, (_, i) => ({ off: base + i * 2048 + 100, data: Buffer.alloc(1000, i + 1) }));
    await Promise.all(pieces.map((p) => dev.write(p.off, p.data)));
    const expected = pattern(base, 64 * KiB, 1);
    for (const p of pieces) p.data.copy(expected, p.off - base);
    const got = Buffer.alloc(64 * KiB);
    await dev.read(base, got);
    expect(got.equals(expected)).toBe(true);
  });

  it('a full-cluster write racing partial writes to the same cluster is not overwritten by their COW-fill', async () => {
    await setup(MiB, 64 * KiB);
    const dev = await openAc(dir.file('ov.add-cow'));
    const full = Buffer.alloc(64 * KiB, 0x77);
    const small = Buffer.alloc(100, 0x55);
    await Promise.all([dev.write(0, small), dev.write(0, full), dev.write(1000, small)]);
    const got = Buffer.alloc(64 * KiB);
    await dev.read(0, got);
    // Every byte comes from one of the writes, never from the backing (COW-fill) pattern.
    expect(got.subarray(100, 1000).every((b) => b === 0x77)).toBe(true);
    expect(got.subarray(1100).every((b) => b === 0x77)).toBe(true);
  });

  it('never writes past the image end (image length not a multiple of 512 or of the cluster)', async () => {
    dir = makeTempDir('addcow-dev-');
    createPatternedImage(dir.file('base.img'), 2 * MiB, 1);
    const imageLength = MiB + 700; // virtual size MiB + 512
    writeFileSync(dir.file('disk.img'), Buffer.alloc(imageLength, 0x33));
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img', clusterSize: 64 * KiB });
    const dev = await openAc(dir.file('ov.add-cow'));
    expect(dev.size).toBe(MiB + 512);
    await dev.write(MiB + 10, Buffer.alloc(10, 0xcc));
    await dev.flush();
    const image = readFileSync(dir.file('disk.img'));
    expect(image.length).toBe(imageLength);
    expect(image.subarray(MiB + 512).every((b) => b === 0x33)).toBe(true);
    const expected = pattern(MiB, 512, 1);
    expected.fill(0xcc, 10, 20);
    expect(image.subarray(MiB, MiB + 512).equals(expected)).toBe(true);
  });

  it('write zeroes over a partial unallocated cluster zeros only the range and COW-fills the rest', async () => {
    await setup(MiB, 64 * KiB);
    const dev = await openAc(dir.file('ov.add-cow'));
    await dev.writeZeroes(1000, 70_000);
    const got = Buffer.alloc(192 * KiB);
    await dev.read(0, got);
    const expected = pattern(0, 192 * KiB, 1);
    expected.fill(0, 1000, 71_000);
    expect(got.equals(expected)).toBe(true);
  });

  it('the backing file is opened read-only and never changes', async () => {
    await setup();
    const before = readFileSync(dir.file('base.img'));
    const dev = await openAc(dir.file('ov.add-cow'));
    await dev.write(0, Buffer.alloc(MiB, 9));
    await dev.trim(0, MiB);
    await dev.flush();
    expect(readFileSync(dir.file('base.img')).equals(before)).toBe(true);
  });
});

describe('add-cow reads', () => {
  it('reads zeros past the backing file end when the image is larger', async () => {
    await setup(100_000, 4096, 300 * KiB);
    const dev = await openAc(dir.file('ov.add-cow'));
    expect(dev.size).toBe(300 * KiB);
    const got = Buffer.alloc(300 * KiB);
    await dev.read(0, got);
    expect(got.subarray(0, 100_000).equals(pattern(0, 100_000, 1))).toBe(true);
    expect(got.subarray(100_000).every((b) => b === 0)).toBe(true);
  });

  it('ignores bitmap bits past the last cluster and writes them back as 0', async () => {
    dir = makeTempDir('addcow-dev-');
    createPatternedImage(dir.file('base.img'), 3 * 4096, 1);
    writeFileSync(dir.file('disk.img'), Buffer.alloc(3 * 4096, 0x44));
    writeCraftedAddCow(dir.file('ov.add-cow'), {
      clusterBits: 12,
      backingName: 'base.img',
      imageName: 'disk.img',
      virtualSize: 3 * 4096,
      bitmap: Uint8Array.of(0b1111_1010),
    });
    const dev = await openAc(dir.file('ov.add-cow'));
    const got = Buffer.alloc(3 * 4096);
    await dev.read(0, got);
    expect(got.subarray(0, 4096).equals(pattern(0, 4096, 1))).toBe(true);
    expect(got.subarray(4096, 8192).every((b) => b === 0x44)).toBe(true);
    expect(got.subarray(8192).equals(pattern(8192, 4096, 1))).toBe(true);
    await dev.write(0, Buffer.alloc(1, 1));
    await dev.flush();
    expect(diskBitmapByte(dir.file('ov.add-cow'), 4096, 0)).toBe(0b011);
  });

  it('a .add-cow file shorter than its bitmap (image grew) reads the missing bits as unallocated', async () => {
    await setup(MiB, 4096);
    truncateSync(dir.file('disk.img'), 4 * MiB);
    truncateSync(dir.file('ov.add-cow'), 4096);
    const dev = await openAc(dir.file('ov.add-cow'));
    expect(dev.size).toBe(4 * MiB);
    const got = Buffer.alloc(8192);
    await dev.read(MiB - 4096, got);
    expect(got.subarray(0, 4096).equals(pattern(MiB - 4096, 4096, 1))).toBe(true);
    expect(got.subarray(4096).every((b) => b === 0)).toBe(true);
    await dev.write(3 * MiB, Buffer.alloc(4096, 2));
    await dev.flush();
    expect(diskBitmapByte(dir.file('ov.add-cow'), 4096, 96)).toBe(1);
  });
});

describe('add-cow ALL_ALLOCATED', () => {
  it('ignores the bitmap and the backing file (which may be missing)', async () => {
    dir = makeTempDir('addcow-dev-');
    writeFileSync(dir.file('disk.img'), pattern(0, 64 * KiB, 4));
    writeCraftedAddCow(dir.file('ov.add-cow'), {
      clusterBits: 12,
      backingName: 'gone.img',
      imageName: 'disk.img',
      compat: 1n,
      virtualSize: 64 * KiB,
    });
    const dev = await openAc(dir.file('ov.add-cow'));
    const got = Buffer.alloc(64 * KiB);
    await dev.read(0, got);
    expect(got.equals(pattern(0, 64 * KiB, 4))).toBe(true);
    await dev.write(5, Buffer.alloc(3, 9));
    await dev.flush();
    expect(readFileSync(dir.file('disk.img')).subarray(5, 8).equals(Buffer.alloc(3, 9))).toBe(true);
    expect(readFileSync(dir.file('ov.add-cow')).subarray(4096).every((b) => b === 0)).toBe(true);
    expect(await dev.blockStatus(0, 64 * KiB)).toEqual([expect.objectContaining({ depth: 1, length: 64 * KiB })]);
  });
});

describe('add-cow formats are recorded, never probed', () => {
  it('a raw backing file that starts with "ACOW" is read as raw bytes', async () => {
    dir = makeTempDir('addcow-dev-');
    // The backing "disk" contains a valid add-cow header (a guest could write this).
    const evil = Buffer.concat([craftAddCow({ clusterBits: 12, imageName: '/etc/passwd' }), Buffer.alloc(8192, 0x61)]);
    writeFileSync(dir.file('base.img'), evil);
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img', clusterSize: 4096 });
    const dev = await openAc(dir.file('ov.add-cow'));
    const got = Buffer.alloc(evil.length);
    await dev.read(0, got);
    expect(got.equals(evil)).toBe(true);
  });

  it('options.backingFormat overrides the header (explicit operator choice)', async () => {
    dir = makeTempDir('addcow-dev-');
    createPatternedImage(dir.file('base.img'), MiB, 1);
    await createAddCow(dir.file('mid.add-cow'), { imageFile: 'mid.img', backingFile: 'base.img', clusterSize: 4096 });
    writeCraftedAddCow(dir.file('top.add-cow'), { clusterBits: 12, backingName: 'mid.add-cow', imageName: 'top.img', virtualSize: MiB });
    writeFileSync(dir.file('top.img'), Buffer.alloc(MiB));
    const asRaw = await openAc(dir.file('top.add-cow'));
    const head = Buffer.alloc(4);
    await asRaw.read(0, head);
    expect(head.toString('latin1')).toBe('ACOW');
    const asAddCow = await openAc(dir.file('top.add-cow'), { backingFormat: 'add-cow' });
    const got = Buffer.alloc(4096);
    await asAddCow.read(0, got);
    expect(got.equals(pattern(0, 4096, 1))).toBe(true);
  });

  it.each([
    ['an image format other than raw', { imageFormat: 'qcow2' }, /image file format "qcow2" is not supported/],
    ['an unsupported backing format', { backingFormat: 'vmdk' }, /backing file format "vmdk" is not supported/],
    ['an empty backing format with a backing file', { backingFormat: '' }, /backing file format is empty .*never probed/],
  ])('refuses %s', async (_t, o, message) => {
    dir = makeTempDir('addcow-dev-');
    createPatternedImage(dir.file('base.img'), MiB, 1);
    writeFileSync(dir.file('disk.img'), Buffer.alloc(MiB));
    writeCraftedAddCow(dir.file('ov.add-cow'), { clusterBits: 12, backingName: 'base.img', imageName: 'disk.img', virtualSize: MiB, ...o });
    await expect(openImage(dir.file('ov.add-cow'))).rejects.toThrow(message);
  });

  it('refuses an invalid header on open, naming the file and the field', async () => {
    dir = makeTempDir('addcow-dev-');
    writeCraftedAddCow(dir.file('ov.add-cow'), { clusterBits: 12, features: 4n });
    await expect(openImage(dir.file('ov.add-cow'), { format: 'add-cow' })).rejects.toThrow(/ov\.add-cow: invalid add-cow header: .*incompatible features 0x4/);
  });
});

describe('add-cow names', () => {
  it('resolves relative names against the .add-cow directory, not the CWD', async () => {
    await setup();
    expect(process.cwd()).not.toBe(dir.path);
    const dev = await openAc(dir.file('ov.add-cow'));
    const inner = (dev as unknown as { driver: AddCowDevice }).driver;
    expect(inner.imagePath).toBe(dir.file('disk.img'));
    expect(inner.backingPath).toBe(dir.file('base.img'));
  });

  const sameFileCases: Array<[string, (d: TempDir) => void, RegExp]> = [
    ['image = backing', (d) => writeCraftedAddCow(d.file('ov.add-cow'), { backingName: 'base.img', imageName: './base.img', virtualSize: MiB }), /image file and the backing file are the same/],
    ['image = the .add-cow file', (d) => writeCraftedAddCow(d.file('ov.add-cow'), { backingName: 'base.img', imageName: 'ov.add-cow', virtualSize: MiB }), /add-cow file and the image file are the same/],
    ['backing = the .add-cow file', (d) => writeCraftedAddCow(d.file('ov.add-cow'), { backingName: d.file('ov.add-cow'), imageName: 'disk.img', virtualSize: MiB }), /add-cow file and the backing file are the same/],
    [
      'image = backing through a symlink',
      (d) => {
        symlinkSync(d.file('base.img'), d.file('alias.img'));
        writeCraftedAddCow(d.file('ov.add-cow'), { backingName: 'base.img', imageName: 'alias.img', virtualSize: MiB });
      },
      /image file and the backing file are the same/,
    ],
    [
      'image = backing through a hard link',
      (d) => {
        linkSync(d.file('base.img'), d.file('hard.img'));
        writeCraftedAddCow(d.file('ov.add-cow'), { backingName: 'hard.img', imageName: 'base.img', virtualSize: MiB });
      },
      /image file and the backing file are the same/,
    ],
  ];
  it.each(sameFileCases)('refuses %s', async (_t, build, message) => {
    dir = makeTempDir('addcow-dev-');
    createPatternedImage(dir.file('base.img'), MiB, 1);
    writeFileSync(dir.file('disk.img'), Buffer.alloc(MiB));
    build(dir);
    await expect(openImage(dir.file('ov.add-cow'))).rejects.toThrow(message);
  });

  it('refuses a missing image file, naming it', async () => {
    dir = makeTempDir('addcow-dev-');
    writeCraftedAddCow(dir.file('ov.add-cow'), { imageName: 'nope.img' });
    await expect(openImage(dir.file('ov.add-cow'))).rejects.toThrow(/cannot open image file "nope.img"/);
  });
});

describe('add-cow block status', () => {
  it('reports depth 1 for allocated, backing depth + 1, and depth 0 zeros past the backing end', async () => {
    await setup(200 * KiB, 64 * KiB, 512 * KiB);
    const dev = await openAc(dir.file('ov.add-cow'));
    await dev.write(64 * KiB, Buffer.alloc(64 * KiB, 1));
    const extents = await dev.blockStatus(0, 512 * KiB);
    expect(extents).toEqual([
      { length: 64 * KiB, flags: 0, depth: 2 },
      { length: 64 * KiB, flags: 0, depth: 1 },
      { length: 200 * KiB - 128 * KiB, flags: 0, depth: 2 },
      { length: 512 * KiB - 200 * KiB, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 0 },
    ]);
  });

  it.runIf(nativeFs !== undefined)('an allocated cluster punched by TRIM is depth 1 ZERO|HOLE', async () => {
    await setup(MiB, 64 * KiB);
    const dev = await openAc(dir.file('ov.add-cow'));
    await dev.trim(0, 128 * KiB);
    const extents = await dev.blockStatus(0, 256 * KiB);
    expect(extents[0]).toEqual({ length: 128 * KiB, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 1 });
    expect(extents[1]).toMatchObject({ depth: 2 });
    expect(statSync(dir.file('disk.img')).blocks).toBe(0);
  });

  it('no backing file and compat=0: unallocated clusters are depth 0 zeros', async () => {
    dir = makeTempDir('addcow-dev-');
    writeFileSync(dir.file('disk.img'), Buffer.alloc(128 * KiB, 7));
    writeCraftedAddCow(dir.file('ov.add-cow'), { clusterBits: 16, imageName: 'disk.img', compat: 0n, virtualSize: 128 * KiB });
    const dev = await openAc(dir.file('ov.add-cow'));
    await dev.write(64 * KiB, Buffer.alloc(10, 1));
    expect(await dev.blockStatus(0, 128 * KiB)).toEqual([
      { length: 64 * KiB, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 0 },
      { length: 64 * KiB, flags: 0, depth: 1 },
    ]);
  });
});
