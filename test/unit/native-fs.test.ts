/**
 * The native sparse-file addon (build/fsx.node) against real files on the real
 * filesystem: holes made with truncate, punched holes that free blocks, zeroed ranges,
 * ENXIO → -1, and errors that carry errno codes. Locally a missing addon skips loudly;
 * under CI=true it fails (scripts/build-native.sh must have built it).
 */
import { mkdtemp, open, rm, stat, type FileHandle } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nativeFs, nativeFsUnavailableReason, type NativeFs } from '../../src/block/native-fs.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function gateNative(): boolean {
  if (nativeFs) return true;
  if (process.env.CI === 'true') throw new Error(`native addon unavailable in CI: ${nativeFsUnavailableReason}`);
  console.warn(`\n*** SKIPPING native-fs tests: ${nativeFsUnavailableReason} ***\n`);
  return false;
}

const available = gateNative();
const fsx = nativeFs as NativeFs;

/** A 4 MiB sparse file with data at [1M, 1M+64K) and [3M, 3M+8K). */
async function sparseFile(dir: string, name: string): Promise<FileHandle> {
  const fh = await open(path.join(dir, name), 'w+');
  await fh.truncate(4 * MiB);
  await fh.write(Buffer.alloc(64 * KiB, 0xaa), 0, 64 * KiB, 1 * MiB);
  await fh.write(Buffer.alloc(8 * KiB, 0xbb), 0, 8 * KiB, 3 * MiB);
  await fh.sync();
  return fh;
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length, 0x55);
  const { bytesRead } = await fh.read(buf, 0, length, offset);
  expect(bytesRead).toBe(length);
  return buf;
}

describe.runIf(available)('native-fs addon', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'cownbd-nativefs-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('finds data and holes in a sparse file', async () => {
    const fh = await sparseFile(dir, 'seek');
    try {
      const fd = fh.fd;
      expect(await fsx.seekData(fd, 0)).toBe(1 * MiB);
      expect(await fsx.seekHole(fd, 1 * MiB)).toBe(1 * MiB + 64 * KiB);
      expect(await fsx.seekData(fd, 1 * MiB + 64 * KiB)).toBe(3 * MiB);
      expect(await fsx.seekHole(fd, 3 * MiB)).toBe(3 * MiB + 8 * KiB);
      // Inside data, seekData is the identity; inside a hole, seekHole is.
      expect(await fsx.seekData(fd, 1 * MiB + 100)).toBe(1 * MiB + 100);
      expect(await fsx.seekHole(fd, 2 * MiB)).toBe(2 * MiB);
      // EOF counts as a hole.
      expect(await fsx.seekHole(fd, 3 * MiB + 8 * KiB)).toBe(3 * MiB + 8 * KiB);
    } finally {
      await fh.close();
    }
  });

  it('returns -1 (ENXIO) when there is no data after the offset or the offset is past EOF', async () => {
    const fh = await sparseFile(dir, 'enxio');
    try {
      expect(await fsx.seekData(fh.fd, 3 * MiB + 8 * KiB)).toBe(-1);
      expect(await fsx.seekData(fh.fd, 4 * MiB)).toBe(-1);
      expect(await fsx.seekData(fh.fd, 100 * MiB)).toBe(-1);
      expect(await fsx.seekHole(fh.fd, 4 * MiB)).toBe(-1);
      expect(await fsx.seekHole(fh.fd, 2 ** 40)).toBe(-1);
    } finally {
      await fh.close();
    }
  });

  it('seekDataSync/seekHoleSync answer like the async calls, -1 on ENXIO, and throw other errors', async () => {
    const fh = await sparseFile(dir, 'seeksync');
    try {
      const fd = fh.fd;
      for (const at of [0, 100, 1 * MiB, 1 * MiB + 64 * KiB, 2 * MiB, 3 * MiB + 8 * KiB, 4 * MiB, 2 ** 40]) {
        expect(fsx.seekDataSync!(fd, at), `seekData ${at}`).toBe(await fsx.seekData(fd, at));
        expect(fsx.seekHoleSync!(fd, at), `seekHole ${at}`).toBe(await fsx.seekHole(fd, at));
      }
      expect(fsx.seekDataSync!(fd, 4 * MiB)).toBe(-1);
    } finally {
      await fh.close();
    }
    expect(() => fsx.seekDataSync!(987654, 0)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'lseek' }));
    expect(() => fsx.seekHoleSync!(-1 as number, 0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });

  it('punchHole makes bytes read as zero, frees blocks and keeps the size', async () => {
    const fh = await open(path.join(dir, 'punch'), 'w+');
    try {
      await fh.write(Buffer.alloc(2 * MiB, 0xcc), 0, 2 * MiB, 0);
      await fh.sync();
      const before = await fh.stat();
      await fsx.punchHole(fh.fd, 256 * KiB, 1 * MiB);
      const after = await fh.stat();
      expect(after.size).toBe(2 * MiB);
      // 1 MiB freed = 2048 512-byte blocks (allow filesystem slack).
      expect(before.blocks - after.blocks).toBeGreaterThanOrEqual(2048 - 16);
      expect((await readAt(fh, 256 * KiB, 1 * MiB)).every((b) => b === 0)).toBe(true);
      // Neighbours untouched.
      expect((await readAt(fh, 256 * KiB - 4096, 4096)).every((b) => b === 0xcc)).toBe(true);
      expect((await readAt(fh, 1280 * KiB, 4096)).every((b) => b === 0xcc)).toBe(true);
      expect(await fsx.seekHole(fh.fd, 0)).toBe(256 * KiB);
      expect(await fsx.seekData(fh.fd, 256 * KiB)).toBe(1280 * KiB);
    } finally {
      await fh.close();
    }
  });

  it('punchHole with an unaligned range zeroes exactly that range', async () => {
    const fh = await open(path.join(dir, 'punch-unaligned'), 'w+');
    try {
      await fh.write(Buffer.alloc(64 * KiB, 0xdd), 0, 64 * KiB, 0);
      await fsx.punchHole(fh.fd, 1000, 10_000);
      const all = await readAt(fh, 0, 64 * KiB);
      expect(all.subarray(0, 1000).every((b) => b === 0xdd)).toBe(true);
      expect(all.subarray(1000, 11_000).every((b) => b === 0)).toBe(true);
      expect(all.subarray(11_000).every((b) => b === 0xdd)).toBe(true);
    } finally {
      await fh.close();
    }
  });

  it('zeroRange makes bytes read as zero, keeps the size and keeps the blocks allocated', async () => {
    const fh = await open(path.join(dir, 'zero'), 'w+');
    try {
      await fh.write(Buffer.alloc(2 * MiB, 0xee), 0, 2 * MiB, 0);
      await fh.sync();
      const before = await fh.stat();
      await fsx.zeroRange(fh.fd, 4096 + 17, 1 * MiB);
      const after = await fh.stat();
      expect(after.size).toBe(2 * MiB);
      expect(after.blocks).toBeGreaterThanOrEqual(before.blocks - 16);
      const all = await readAt(fh, 0, 2 * MiB);
      expect(all.subarray(0, 4096 + 17).every((b) => b === 0xee)).toBe(true);
      expect(all.subarray(4096 + 17, 4096 + 17 + MiB).every((b) => b === 0)).toBe(true);
      expect(all.subarray(4096 + 17 + MiB).every((b) => b === 0xee)).toBe(true);
    } finally {
      await fh.close();
    }
  });

  // tmpfs has no FALLOC_FL_ZERO_RANGE: this exercises the punch + re-allocate fallback.
  it.runIf(existsSync('/dev/shm'))('zeroRange falls back where ZERO_RANGE is unsupported (tmpfs)', async () => {
    const shmDir = await mkdtemp('/dev/shm/cownbd-nativefs-');
    const fh = await open(path.join(shmDir, 'zero'), 'w+');
    try {
      await fh.write(Buffer.alloc(256 * KiB, 0x77), 0, 256 * KiB, 0);
      const before = await fh.stat();
      await fsx.zeroRange(fh.fd, 64 * KiB, 64 * KiB);
      const after = await fh.stat();
      expect(after.size).toBe(256 * KiB);
      expect(after.blocks).toBe(before.blocks); // re-allocated, not left as a hole
      const all = await readAt(fh, 0, 256 * KiB);
      expect(all.subarray(0, 64 * KiB).every((b) => b === 0x77)).toBe(true);
      expect(all.subarray(64 * KiB, 128 * KiB).every((b) => b === 0)).toBe(true);
      expect(all.subarray(128 * KiB).every((b) => b === 0x77)).toBe(true);
    } finally {
      await fh.close();
      await rm(shmDir, { recursive: true, force: true });
    }
  });

  it('length 0 is a no-op', async () => {
    const fh = await open(path.join(dir, 'empty-range'), 'w+');
    try {
      await fh.write(Buffer.alloc(4096, 1), 0, 4096, 0);
      await fsx.punchHole(fh.fd, 0, 0);
      await fsx.zeroRange(fh.fd, 0, 0);
      expect((await readAt(fh, 0, 4096)).every((b) => b === 1)).toBe(true);
    } finally {
      await fh.close();
    }
  });

  it('rejects with an errno code on a bad descriptor or a read-only descriptor', async () => {
    await expect(fsx.seekData(987_654, 0)).rejects.toMatchObject({ code: 'EBADF', syscall: 'lseek' });
    await expect(fsx.punchHole(987_654, 0, 4096)).rejects.toMatchObject({ code: 'EBADF' });
    const file = path.join(dir, 'ro');
    await (await open(file, 'w')).close();
    const ro = await open(file, 'r');
    try {
      await expect(fsx.punchHole(ro.fd, 0, 4096)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fallocate' });
      await expect(fsx.zeroRange(ro.fd, 0, 4096)).rejects.toHaveProperty('code', 'EBADF');
    } finally {
      await ro.close();
    }
    expect((await stat(file)).size).toBe(0);
  });

  it('rejects bad arguments with EINVAL instead of truncating them', async () => {
    const fh = await open(path.join(dir, 'args'), 'w+');
    try {
      for (const bad of [-1, 1.5, Number.NaN, 2 ** 53, Infinity]) {
        await expect(fsx.seekData(fh.fd, bad)).rejects.toMatchObject({ code: 'EINVAL' });
        await expect(fsx.punchHole(fh.fd, 0, bad)).rejects.toMatchObject({ code: 'EINVAL' });
      }
      await expect(fsx.zeroRange(fh.fd, '0' as unknown as number, 1)).rejects.toMatchObject({ code: 'EINVAL' });
      await expect((fsx.seekHole as (fd: number) => Promise<number>)(fh.fd)).rejects.toMatchObject({
        code: 'EINVAL',
      });
    } finally {
      await fh.close();
    }
  });

  it('runs off the event loop: many concurrent calls all settle', async () => {
    const fh = await sparseFile(dir, 'concurrent');
    try {
      const results = await Promise.all(Array.from({ length: 200 }, (_, i) => fsx.seekData(fh.fd, (i % 4) * MiB)));
      expect(results.slice(0, 4)).toEqual([1 * MiB, 1 * MiB, 3 * MiB, 3 * MiB]);
      expect(new Set(results).size).toBe(2);
    } finally {
      await fh.close();
    }
  });
});

describe.runIf(available)('native fast paths: preadNoWait and pwriteBatch', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'fsx-fast-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('preadNoWait reads cached data into a view at the right position, 0 at EOF, -1/-2 otherwise', async () => {
    const fh = await open(path.join(dir, 'cached'), 'w+');
    try {
      const data = Buffer.alloc(16 * KiB);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      await fh.write(data, 0, data.length, 0); // just written: in the page cache
      const target = Buffer.alloc(8 * KiB + 10, 0xee);
      const n = fsx.preadNoWait!(fh.fd, target.subarray(10), 4 * KiB);
      // Either served from the cache (the normal case) or "would block" / unsupported here.
      if (n >= 0) {
        expect(n).toBe(8 * KiB);
        expect(target.subarray(10).equals(data.subarray(4 * KiB, 12 * KiB))).toBe(true);
        expect(target.subarray(0, 10).every((b) => b === 0xee)).toBe(true); // the view's offset is honoured
        expect(fsx.preadNoWait!(fh.fd, Buffer.alloc(10), 16 * KiB)).toBe(0); // EOF
      } else {
        expect([-1, -2]).toContain(n);
      }
      expect(fsx.preadNoWait!(-5 as number, Buffer.alloc(1), 0)).toBeLessThan(0); // bad fd: never throws
    } finally {
      await fh.close();
    }
  });

  it('pwriteBatch writes every buffer at its position in one job and reports -errno per item', async () => {
    const file = path.join(dir, 'batch');
    const fh = await open(file, 'w+');
    try {
      const a = Buffer.alloc(4 * KiB, 0x11);
      const b = Buffer.alloc(100, 0x22);
      const big = Buffer.alloc(2 * MiB + 3, 0x33);
      const results = await fsx.pwriteBatch!(fh.fd, [a, b.subarray(10), big], [0, 8 * KiB, 1 * MiB]);
      expect(results).toEqual([4 * KiB, 90, 2 * MiB + 3]);
      const back = await readAt(fh, 0, 4 * KiB);
      expect(back.equals(a)).toBe(true);
      expect((await readAt(fh, 8 * KiB, 90)).every((x) => x === 0x22)).toBe(true);
      expect((await readAt(fh, 1 * MiB, 2 * MiB + 3)).equals(big)).toBe(true);
    } finally {
      await fh.close();
    }
    const ro = await open(file, 'r');
    try {
      const [r] = await fsx.pwriteBatch!(ro.fd, [Buffer.alloc(1)], [0]);
      expect(r).toBe(-9); // EBADF: the descriptor is not open for writing
    } finally {
      await ro.close();
    }
    await expect(fsx.pwriteBatch!(3, [Buffer.alloc(1)], [0, 1])).rejects.toMatchObject({ code: 'EINVAL' });
  });
});
