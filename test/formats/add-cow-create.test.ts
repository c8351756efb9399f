/**
 * createAddCow / finalizeAddCow / inspectAddCow: produced bytes checked against the
 * independent crafter, sizing rules, refusals, and "after finalize the image file alone
 * is the disk" (checked with qemu-img compare when installed).
 */
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { finalizeAddCow, inspectAddCow, parseAddCowHeader } from '../../src/formats/add-cow/index.js';
import { createAddCow, openImage } from '../../src/formats/open-image.js';
import { craftAddCow } from '../helpers/add-cow-craft.js';
import { createPatternedImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
let dir: TempDir;

afterEach(() => dir?.cleanup());

describe('createAddCow', () => {
  it('writes exactly the crafted header, a zero bitmap, and HEADER_SIZE + roundup(bitmap, cluster) bytes', async () => {
    dir = makeTempDir('addcow-create-');
    createPatternedImage(dir.file('base.img'), 3 * MiB, 1);
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img' });
    const expected = craftAddCow({ backingName: 'base.img', imageName: 'disk.img', virtualSize: 3 * MiB });
    expect(readFileSync(dir.file('ov.add-cow')).equals(expected)).toBe(true);
    // The image was created sparse at the backing size.
    expect(statSync(dir.file('disk.img')).size).toBe(3 * MiB);
  });

  it('sets ALL_ALLOCATED and records no backing format when there is no backing file', async () => {
    dir = makeTempDir('addcow-create-');
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', size: MiB, clusterSize: 4096 });
    const h = parseAddCowHeader(readFileSync(dir.file('ov.add-cow')));
    expect(h.allAllocated).toBe(true);
    expect(h.backingName).toBeUndefined();
    expect(readFileSync(dir.file('ov.add-cow')).length).toBe(4096 + 4096);
  });

  it('stores names exactly as given (relative stays relative; absolute stays absolute)', async () => {
    dir = makeTempDir('addcow-create-');
    createPatternedImage(dir.file('base.img'), MiB, 1);
    await createAddCow(dir.file('a.add-cow'), { imageFile: 'a.img', backingFile: dir.file('base.img'), backingFormat: 'raw' });
    const h = parseAddCowHeader(readFileSync(dir.file('a.add-cow')));
    expect(h.imageName).toBe('a.img');
    expect(h.backingName).toBe(dir.file('base.img'));
    expect(h.backingFormat).toBe('raw');
  });

  it('adopts an existing image: size = its length; its contents are not touched', async () => {
    dir = makeTempDir('addcow-create-');
    createPatternedImage(dir.file('base.img'), MiB, 1);
    writeFileSync(dir.file('disk.img'), pattern(0, 2 * MiB + 512, 2));
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img', clusterSize: 4096 });
    expect(readFileSync(dir.file('disk.img')).equals(pattern(0, 2 * MiB + 512, 2))).toBe(true);
    const info = await inspectAddCow(dir.file('ov.add-cow'));
    expect(info.virtualSize).toBe(2 * MiB + 512);
    expect(info.clusterCount).toBe(513);
    expect(info.allocatedClusters).toBe(0);
  });

  it('an explicit size resizes the image file', async () => {
    dir = makeTempDir('addcow-create-');
    createPatternedImage(dir.file('base.img'), MiB, 1);
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img', size: 5 * MiB });
    expect(statSync(dir.file('disk.img')).size).toBe(5 * MiB);
  });

  it('sizes from the backing device\'s virtual size when the backing is itself an add-cow', async () => {
    dir = makeTempDir('addcow-create-');
    await createAddCow(dir.file('mid.add-cow'), { imageFile: 'mid.img', size: 3 * MiB });
    await createAddCow(dir.file('top.add-cow'), { imageFile: 'top.img', backingFile: 'mid.add-cow', backingFormat: 'add-cow' });
    expect(statSync(dir.file('top.img')).size).toBe(3 * MiB);
    expect(parseAddCowHeader(readFileSync(dir.file('top.add-cow'))).backingFormat).toBe('add-cow');
  });

  it('overwrites an existing .add-cow only with force', async () => {
    dir = makeTempDir('addcow-create-');
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', size: MiB });
    await expect(createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', size: MiB })).rejects.toThrow(/already exists \(use force/);
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', clusterSize: 4096, force: true });
    expect(parseAddCowHeader(readFileSync(dir.file('ov.add-cow'))).clusterBits).toBe(12);
  });

  it.each([
    ['a cluster size that is not a power of two', { clusterSize: 3 * 4096, size: MiB }, /cluster size 12288 must be a power of two/],
    ['a cluster size below 4 KiB', { clusterSize: 2048, size: MiB }, /cluster size 2048/],
    ['a cluster size above 2 MiB', { clusterSize: 4 * MiB, size: MiB }, /cluster size 4194304/],
    ['a size that is not a multiple of 512', { size: 1000 }, /size 1000 is not a multiple of 512/],
    ['no size, no image file and no backing file', {}, /no size given/],
    ['a missing backing file', { backingFile: 'nope.img' }, /backing file "nope.img" .* does not exist/],
    ['image = backing', { backingFile: 'disk.img', size: MiB }, /image file and the backing file are the same/],
    ['image = the .add-cow file', { imageFile: 'ov.add-cow', size: MiB }, /add-cow file and the image file are the same/],
  ])('refuses %s', async (_t, o, message) => {
    dir = makeTempDir('addcow-create-');
    await expect(createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', ...o })).rejects.toThrow(message);
    expect(existsSync(dir.file('ov.add-cow'))).toBe(false);
  });
});

describe('finalizeAddCow', () => {
  it('refuses while clusters are missing, naming how many', async () => {
    dir = makeTempDir('addcow-fin-');
    createPatternedImage(dir.file('base.img'), MiB, 1);
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img', clusterSize: 64 * KiB });
    const dev = await openImage(dir.file('ov.add-cow'));
    await dev.write(0, Buffer.alloc(3 * 64 * KiB, 1));
    await dev.flush();
    await dev.close();
    await expect(finalizeAddCow(dir.file('ov.add-cow'))).rejects.toThrow(/13 of 16 clusters are not allocated/);
    expect(parseAddCowHeader(readFileSync(dir.file('ov.add-cow'))).allAllocated).toBe(false);
  });

  it('after every cluster is copied, sets ALL_ALLOCATED; the image alone then equals the virtual disk', async () => {
    dir = makeTempDir('addcow-fin-');
    const size = MiB + 4096 + 512; // last cluster partial
    createPatternedImage(dir.file('base.img'), MiB, 1);
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img', clusterSize: 64 * KiB, size });
    const dev = await openImage(dir.file('ov.add-cow'));
    await dev.write(70_000, Buffer.alloc(5000, 0xab));
    // "Stream": copy every still-unallocated cluster by reading it and writing it back.
    for (let off = 0; off < size; off += 64 * KiB) {
      const buf = Buffer.alloc(Math.min(64 * KiB, size - off));
      await dev.read(off, buf);
      await dev.write(off, buf);
    }
    const expected = Buffer.alloc(size);
    pattern(0, MiB, 1).copy(expected);
    expected.fill(0xab, 70_000, 75_000);
    writeFileSync(dir.file('reference.img'), expected);
    await dev.flush();
    await dev.close();

    await finalizeAddCow(dir.file('ov.add-cow'));
    const bytes = readFileSync(dir.file('ov.add-cow'));
    const h = parseAddCowHeader(bytes);
    expect(h.allAllocated).toBe(true);
    expect(h.backingName).toBe('base.img'); // names unchanged
    expect(readFileSync(dir.file('disk.img')).equals(expected)).toBe(true);
    // The backing file can go: the add-cow (and the raw image alone) still read correctly.
    rmSync(dir.file('base.img'));
    const again = await openImage(dir.file('ov.add-cow'));
    const got = Buffer.alloc(size);
    await again.read(0, got);
    await again.close();
    expect(got.equals(expected)).toBe(true);
    await finalizeAddCow(dir.file('ov.add-cow')); // idempotent
    if (requireTool('qemu-img')) {
      const out = execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', dir.file('disk.img'), dir.file('reference.img')], {
        encoding: 'utf8',
        timeout: 30_000,
      });
      expect(out).toMatch(/Images are identical/);
    }
  });
});

describe('inspectAddCow', () => {
  it('reports header, resolved names, allocated runs and bytes without opening the backing file', async () => {
    dir = makeTempDir('addcow-insp-');
    createPatternedImage(dir.file('base.img'), MiB + 512, 1);
    await createAddCow(dir.file('ov.add-cow'), { imageFile: 'disk.img', backingFile: 'base.img', clusterSize: 64 * KiB });
    const dev = await openImage(dir.file('ov.add-cow'));
    await dev.write(64 * KiB + 1, Buffer.alloc(2 * 64 * KiB, 1));
    await dev.write(MiB, Buffer.alloc(512, 1)); // the partial last cluster (512 bytes)
    await dev.flush();
    await dev.close();
    rmSync(dir.file('base.img'));
    const info = await inspectAddCow(dir.file('ov.add-cow'));
    expect(info.imagePath).toBe(dir.file('disk.img'));
    expect(info.backingPath).toBe(dir.file('base.img'));
    expect(info.header.backingFormat).toBe('raw');
    expect(info.clusterCount).toBe(17);
    expect(info.allocatedRuns).toEqual([
      [1, 3],
      [16, 1],
    ]);
    expect(info.allocatedClusters).toBe(4);
    expect(info.allocatedBytes).toBe(3 * 64 * KiB + 512);
    expect([...info.bitmap]).toEqual([0b1110, 0, 1]);
  });
});
