/**
 * RawFileDevice behind CheckedDevice, on real sparse files: data path, flush, block
 * status from SEEK_DATA/SEEK_HOLE, trim and write-zeroes through fallocate, and the
 * contract errors CheckedDevice adds (EINVAL / ENOSPC / EPERM / ESHUTDOWN). The sparse
 * tests need the native addon: locally they skip loudly without it, under CI they fail.
 */
import { mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXTENT_HOLE, EXTENT_ZERO, type Extent } from '../../src/block/block-device.js';
import { CheckedDevice } from '../../src/block/checked-device.js';
import { nativeFs, nativeFsUnavailableReason } from '../../src/block/native-fs.js';
import { RawFileDevice } from '../../src/block/raw-file-device.js';
import { FileIo } from '../../src/block/file-io.js';
import { ioPolicyFromEnv } from '../../src/block/io-policy.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const HZ = EXTENT_HOLE | EXTENT_ZERO;

function gateNative(): boolean {
  if (nativeFs) return true;
  if (process.env.CI === 'true') throw new Error(`native addon unavailable in CI: ${nativeFsUnavailableReason}`);
  console.warn(`\n*** SKIPPING sparse RawFileDevice tests: ${nativeFsUnavailableReason} ***\n`);
  return false;
}
const sparse = gateNative();

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cownbd-raw-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A pseudo-random but reproducible pattern, so misplaced bytes are caught. */
function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
  return buf;
}

/** A sparse 4 MiB image: data at [1M, 1M+128K), hole elsewhere. */
async function makeImage(name: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, '');
  await truncate(file, 4 * MiB);
  const fh = await open(file, 'r+');
  await fh.write(pattern(128 * KiB, 7), 0, 128 * KiB, 1 * MiB);
  await fh.close();
  return file;
}

async function openChecked(file: string, readOnly = false): Promise<CheckedDevice> {
  return new CheckedDevice(await RawFileDevice.open(file, { readOnly }), { readOnly });
}

/** Full block status of [offset, offset+length), asking again while the device returns less. */
async function allExtents(dev: CheckedDevice, offset: number, length: number): Promise<Extent[]> {
  const out: Extent[] = [];
  let pos = offset;
  while (pos < offset + length) {
    const extents = await dev.blockStatus(pos, offset + length - pos);
    for (const e of extents) {
      const last = out[out.length - 1];
      if (last && last.flags === e.flags) out[out.length - 1] = { ...last, length: last.length + e.length };
      else out.push({ ...e });
      pos += e.length;
    }
  }
  return out;
}

describe('RawFileDevice via CheckedDevice', () => {
  it('reads, writes and flushes bytes at the right offsets', async () => {
    const file = await makeImage('rw.img');
    const dev = await openChecked(file);
    try {
      expect(dev.size).toBe(4 * MiB);
      expect(dev.capabilities.writable).toBe(true);
      const got = Buffer.alloc(128 * KiB);
      await dev.read(1 * MiB, got);
      expect(got.equals(pattern(128 * KiB, 7))).toBe(true);

      const data = pattern(10_000, 99);
      await dev.write(12_345, data);
      await dev.write(4 * MiB - 3, Buffer.from([1, 2, 3]), { fua: true });
      await dev.flush();
      const back = Buffer.alloc(10_002);
      await dev.read(12_344, back);
      expect(back[0]).toBe(0);
      expect(back.subarray(1, 10_001).equals(data)).toBe(true);
      expect(back[10_001]).toBe(0);
    } finally {
      await dev.close();
    }
    const onDisk = await readFile(file);
    expect(onDisk.length).toBe(4 * MiB);
    expect(onDisk.subarray(12_345, 22_345).equals(pattern(10_000, 99))).toBe(true);
    expect([...onDisk.subarray(4 * MiB - 3)]).toEqual([1, 2, 3]);
  });

  it('rejects out-of-range requests: EINVAL for reads/trim/status, ENOSPC for writes/zeroes', async () => {
    const dev = await openChecked(await makeImage('range.img'));
    try {
      await expect(dev.read(4 * MiB - 1, Buffer.alloc(2))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(dev.read(-1, Buffer.alloc(1))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(dev.read(0.5, Buffer.alloc(1))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(dev.blockStatus(4 * MiB, 1)).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(dev.trim(4 * MiB - 4096, 8192)).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(dev.write(4 * MiB, Buffer.alloc(1))).rejects.toMatchObject({ code: 'ENOSPC' });
      await expect(dev.writeZeroes(4 * MiB - 512, 1024)).rejects.toMatchObject({ code: 'ENOSPC' });
      // A read ending exactly at the end is fine.
      const tail = Buffer.alloc(1, 0xff);
      await dev.read(4 * MiB - 1, tail);
      expect(tail[0]).toBe(0);
    } finally {
      await dev.close();
    }
    expect((await stat(path.join(dir, 'range.img'))).size).toBe(4 * MiB);
  });

  it('is read-only when opened read-only: EPERM for every mutation, file untouched', async () => {
    const file = await makeImage('ro.img');
    const before = await readFile(file);
    const dev = await openChecked(file, true);
    try {
      expect(dev.capabilities.writable).toBe(false);
      await expect(dev.write(0, Buffer.alloc(512, 1))).rejects.toMatchObject({ code: 'EPERM' });
      await expect(dev.trim(1 * MiB, 4096)).rejects.toMatchObject({ code: 'EPERM' });
      await expect(dev.writeZeroes(1 * MiB, 4096)).rejects.toMatchObject({ code: 'EPERM' });
      const got = Buffer.alloc(4096);
      await dev.read(1 * MiB, got);
      expect(got.equals(pattern(128 * KiB, 7).subarray(0, 4096))).toBe(true);
    } finally {
      await dev.close();
    }
    expect((await readFile(file)).equals(before)).toBe(true);
  });

  it('refuses use after close with ESHUTDOWN', async () => {
    const dev = await openChecked(await makeImage('closed.img'));
    await dev.close();
    await dev.close(); // idempotent
    await expect(dev.read(0, Buffer.alloc(1))).rejects.toMatchObject({ code: 'ESHUTDOWN' });
  });

  describe.runIf(sparse)('sparse files (native addon)', () => {
    it('reports holes as HOLE|ZERO and data as 0', async () => {
      const dev = await openChecked(await makeImage('status.img'));
      try {
        expect(dev.capabilities.blockStatus).toBe(true);
        expect(await allExtents(dev, 0, 4 * MiB)).toEqual([
          { length: 1 * MiB, flags: HZ, depth: 1 },
          { length: 128 * KiB, flags: 0, depth: 1 },
          { length: 4 * MiB - 1 * MiB - 128 * KiB, flags: HZ, depth: 1 },
        ]);
        // A window starting inside data and ending inside the following hole.
        expect(await allExtents(dev, 1 * MiB + 4096, 256 * KiB)).toEqual([
          { length: 124 * KiB, flags: 0, depth: 1 },
          { length: 132 * KiB, flags: HZ, depth: 1 },
        ]);
        // Extents never cover more than asked.
        const small = await dev.blockStatus(0, 4096);
        expect(small.reduce((n, e) => n + e.length, 0)).toBe(4096);
      } finally {
        await dev.close();
      }
    });

    it('trim punches a hole: reads zeros, block status HOLE|ZERO, blocks freed', async () => {
      const file = await makeImage('trim.img');
      const dev = await openChecked(file);
      try {
        expect(dev.capabilities.trim).toBe(true);
        const before = (await stat(file)).blocks;
        await dev.trim(1 * MiB, 64 * KiB, { fua: true });
        expect(before - (await stat(file)).blocks).toBeGreaterThanOrEqual(128 - 8);
        const got = Buffer.alloc(128 * KiB, 0xff);
        await dev.read(1 * MiB, got);
        expect(got.subarray(0, 64 * KiB).every((b) => b === 0)).toBe(true);
        expect(got.subarray(64 * KiB).equals(pattern(128 * KiB, 7).subarray(64 * KiB))).toBe(true);
        expect(await allExtents(dev, 1 * MiB, 128 * KiB)).toEqual([
          { length: 64 * KiB, flags: HZ, depth: 1 },
          { length: 64 * KiB, flags: 0, depth: 1 },
        ]);
      } finally {
        await dev.close();
      }
      expect((await stat(file)).size).toBe(4 * MiB);
    });

    it('writeZeroes zeroes the range, punching by default and keeping it allocated with noHole', async () => {
      const file = await makeImage('zero.img');
      const dev = await openChecked(file);
      try {
        expect(dev.capabilities.zero).toBe(true);
        expect(dev.capabilities.fastZero).toBe(true);
        // Unaligned: only the exact range becomes zero.
        await dev.writeZeroes(1 * MiB + 100, 5000);
        await dev.writeZeroes(1 * MiB + 64 * KiB, 32 * KiB, { noHole: true, fua: true });
        await dev.writeZeroes(0, 8192, { fast: true });
        const got = Buffer.alloc(128 * KiB);
        await dev.read(1 * MiB, got);
        const want = pattern(128 * KiB, 7);
        want.fill(0, 100, 5100);
        want.fill(0, 64 * KiB, 96 * KiB);
        expect(got.equals(want)).toBe(true);
        const st = await stat(file);
        expect(st.size).toBe(4 * MiB);
      } finally {
        await dev.close();
      }
    });
  });

  it('without the addon (an IoPolicy without native, as COWNBD_NO_NATIVE=1 builds) reports everything as data and still zeroes', async () => {
    // The TS fallback path, where CheckedDevice answers block status and emulates zeroing
    // with writes. The CLI builds this policy from COWNBD_NO_NATIVE=1 (ioPolicyFromEnv).
    const policy = ioPolicyFromEnv({ COWNBD_NO_NATIVE: '1' });
    expect(policy.native).toBeUndefined();
    const Raw = RawFileDevice;
    const io = new FileIo(policy);
    const file = await makeImage('fallback.img');
    const dev = new CheckedDevice(await Raw.open(file, { io }));
    try {
      expect(dev.capabilities.blockStatus).toBe(false);
      expect(dev.capabilities.trim).toBe(false);
      expect(dev.capabilities.fastZero).toBe(false);
      expect(await dev.blockStatus(0, 4 * MiB)).toEqual([{ length: 4 * MiB, flags: 0, depth: 1 }]);
      await expect(dev.writeZeroes(0, 4096, { fast: true })).rejects.toMatchObject({ code: 'ENOTSUP' });
      await dev.writeZeroes(1 * MiB + 1, 4096);
      const got = Buffer.alloc(4098, 0xff);
      await dev.read(1 * MiB, got);
      expect(got[0]).toBe(pattern(1, 7)[0]);
      expect(got.subarray(1, 4097).every((b) => b === 0)).toBe(true);
      expect(got[4097]).toBe(pattern(4098, 7)[4097]);
    } finally {
      await dev.close();
    }
  });
});
