/**
 * cow device behaviour that the model suite cannot see: I/O shape (one pwrite per large
 * aligned write), bitmap bits reaching disk only in flush and only after the data,
 * blockStatus depths, TRIM/WRITE_ZEROES semantics, and the inspection API.
 */
import fs, { readFileSync, utimesSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EXTENT_HOLE, EXTENT_ZERO } from '../../src/block/block-device.js';
import { nativeFs } from '../../src/block/native-fs.js';
import { openImage } from '../../src/formats/open-image.js';
import { cowInspection, createCow } from '../../src/formats/cow/index.js';
import { createPatternedImage, makeTempDir, type TempDir } from '../helpers/images.js';

let tmp: TempDir;
let backing: string;
let cow: string;
beforeEach(async () => {
  tmp = makeTempDir('cow-dev-');
  backing = createPatternedImage(tmp.file('base.img'), 1_000_000, 9);
  utimesSync(backing, 1_600_000_000, 1_600_000_000);
  cow = tmp.file('ov.cow');
  await createCow(cow, { backingFile: backing });
});
afterEach(() => {
  vi.restoreAllMocks();
  tmp.cleanup();
});

const BITMAP = 8192;
const DATA = 12288;

describe('cow device', () => {
  it('a 256 KiB aligned write is ONE pwrite to the data area; bits reach disk only at flush', async () => {
    const dev = await openImage(cow);
    // Drivers pwrite through fs.write(fd, buffer, offset, length, position, cb) or, batched,
    // nativeFs.pwriteBatch(fd, buffers, positions): count [position, length] at both.
    const spy = vi.spyOn(fs, 'write');
    const native = nativeFs as Required<NonNullable<typeof nativeFs>> | undefined;
    const batchSpy = native?.pwriteBatch ? vi.spyOn(native, 'pwriteBatch') : undefined;
    const data = Buffer.alloc(256 * 1024, 0x5c);
    await dev.write(65536, data);
    const writes = [
      ...spy.mock.calls.map((c) => [(c as unknown[])[4], (c as unknown[])[3]]),
      ...(batchSpy?.mock.calls ?? []).flatMap(([, buffers, positions]) =>
        buffers.map((b: Uint8Array, i: number) => [positions[i], b.length]),
      ),
    ];
    expect(writes).toEqual([[DATA + 65536, 256 * 1024]]);
    // Not flushed: the on-disk bitmap is still all zero (bits never precede a data sync).
    expect(readFileSync(cow).subarray(BITMAP, BITMAP + 245).every((b) => b === 0)).toBe(true);
    spy.mockClear();
    await dev.flush();
    const raw = readFileSync(cow);
    // sectors 128..639 → bytes 16..79 = 0xff
    expect(raw.subarray(BITMAP + 16, BITMAP + 80).every((b) => b === 0xff)).toBe(true);
    expect(raw[BITMAP + 15]).toBe(0);
    expect(raw[BITMAP + 80]).toBe(0);
    expect(raw.subarray(DATA + 65536, DATA + 65536 + 256 * 1024).equals(data)).toBe(true);
    await dev.close();
  });

  it('sets bits LSB-first exactly like UML (vector 2)', async () => {
    const dev = await openImage(cow);
    const w = (s: number, n: number, fill: number) => dev.write(s * 512, Buffer.alloc(n * 512, fill));
    await w(0, 1, 0xee);
    await w(9, 2, 0xee);
    await w(100, 64, 0xee);
    await w(300, 65, 0xdd);
    await dev.write(1952 * 512, Buffer.alloc(512, 0xee)); // partial last sector of the odd disk
    await dev.flush();
    await dev.close();
    const bm = readFileSync(cow).subarray(BITMAP, BITMAP + 245);
    const expected = Buffer.alloc(245);
    Object.assign(expected, { 0: 0x01, 1: 0x06, 12: 0xf0, 20: 0x0f, 37: 0xf0, 45: 0x1f, 244: 0x01 });
    expected.fill(0xff, 13, 20);
    expected.fill(0xff, 38, 45);
    expect(bm.toString('hex')).toBe(expected.toString('hex'));
  });

  it('write to the partial last sector extends the COW file past data_offset+size (like UML)', async () => {
    const dev = await openImage(cow);
    expect(dev.size).toBe(1_000_448);
    await dev.write(1_000_440, Buffer.alloc(8, 7));
    await dev.flush();
    await dev.close();
    expect(readFileSync(cow).length).toBe(DATA + 1_000_448);
    const dev2 = await openImage(cow);
    const tail = Buffer.alloc(512);
    await dev2.read(1_000_448 - 512, tail);
    expect(tail.subarray(0, 64).equals(readFileSync(backing).subarray(999_936))).toBe(true);
    expect(tail.subarray(64, 504).every((b) => b === 0)).toBe(true);
    expect(tail.subarray(504).every((b) => b === 7)).toBe(true);
    await dev2.close();
  });

  it('blockStatus: own sectors depth 1, backing depth 2, tail past backing EOF ZERO depth 0', async () => {
    const dev = await openImage(cow);
    await dev.write(4096, Buffer.alloc(4096, 1));
    const ext = await dev.blockStatus(0, dev.size);
    expect(ext[0]).toEqual({ length: 4096, flags: 0, depth: 2 });
    expect(ext[1]).toMatchObject({ length: 4096, depth: 1 });
    expect(ext[2]).toMatchObject({ length: 1_000_000 - 8192, depth: 2 });
    expect(ext[3]).toEqual({ length: 448, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 0 });
    expect(ext.reduce((a, e) => a + e.length, 0)).toBe(dev.size);
    await dev.close();
  });

  it('TRIM and WRITE_ZEROES set the bits and read zeros; the backing never shows through', async () => {
    const dev = await openImage(cow);
    if (!nativeFs) {
      // Without hole punching TRIM is not offered: a no-op hint, nothing is written.
      expect(dev.capabilities.trim).toBe(false);
      await dev.trim(500 * 512, 8 * 512);
      expect(cowInspection(dev)!.bitmap.countAllocated()).toBe(0);
      await dev.close();
      return;
    }
    expect(dev.capabilities.trim).toBe(true);
    await dev.trim(500 * 512, 8 * 512);
    await dev.writeZeroes(600 * 512 + 100, 8 * 512);
    const buf = Buffer.alloc(9 * 512);
    await dev.read(600 * 512, buf);
    expect(buf.subarray(0, 100).equals(readFileSync(backing).subarray(600 * 512, 600 * 512 + 100))).toBe(true);
    expect(buf.subarray(100, 100 + 4096).every((b) => b === 0)).toBe(true);
    const insp = cowInspection(dev)!;
    expect(insp.bitmap.isAllocated(500)).toBe(true);
    expect(insp.bitmap.runLength(500, 100)).toBe(8);
    expect(insp.bitmap.runLength(600, 100)).toBe(9);
    expect(insp.bitmap.countAllocated()).toBe(17);
    await dev.close();
  });

  it('inspection exposes header, layout, offsets and backing paths', async () => {
    const dev = await openImage(cow);
    const insp = cowInspection(dev)!;
    expect(insp.layout).toBe('v3');
    expect(insp.header).toMatchObject({ version: 3, size: 1_000_000, mtime: 1_600_000_000, alignment: 4096 });
    expect(insp.geometry).toMatchObject({ bitmapOffset: 8192, bitmapLength: 245, dataOffset: 12288, virtualSize: 1_000_448 });
    expect(insp.backingFile).toEqual({ stored: backing, resolved: backing });
    expect(dev.describe()).toMatchObject({ format: 'cow', backing: { format: 'raw' } });
    await dev.close();
  });

  it('concurrent FUA writes to different sectors all persist (flushes coalesce)', async () => {
    const dev = await openImage(cow);
    await Promise.all(Array.from({ length: 32 }, (_, i) => dev.write(i * 4096 + 100, Buffer.alloc(1000, i + 1), { fua: true })));
    await dev.close();
    const raw = readFileSync(cow);
    for (let i = 0; i < 32; i++) {
      expect(raw[BITMAP + i]).toBe(0b111); // sectors 8i..8i+2 (bytes 100..1099 of block i)
      expect(raw[DATA + i * 4096 + 100]).toBe(i + 1);
    }
  });
  it.runIf(nativeFs !== undefined)('with native-fs: TRIM punches the data area and blockStatus reports ZERO at depth 1', async () => {
    const dev = await openImage(cow);
    await dev.write(0, Buffer.alloc(65536, 1));
    await dev.trim(16384, 16384);
    await dev.flush();
    const ext = await dev.blockStatus(0, 65536 + 4096);
    expect(ext[0]).toEqual({ length: 16384, flags: 0, depth: 1 });
    expect(ext[1]).toEqual({ length: 16384, flags: EXTENT_HOLE | EXTENT_ZERO, depth: 1 });
    expect(ext[2]).toEqual({ length: 32768, flags: 0, depth: 1 });
    expect(ext[3]).toMatchObject({ length: 4096, depth: 2 });
    await dev.close();
  });
});
