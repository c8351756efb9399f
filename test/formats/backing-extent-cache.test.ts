/**
 * BackingExtentCache over a real sparse file (RawFileDevice behind CheckedDevice): the
 * cached answers must equal the device's own answers for any range (across chunk
 * boundaries, starting mid-extent), and a chunk is asked for once, not per query.
 * Needs the native addon for SEEK_DATA/SEEK_HOLE: locally it skips loudly without it,
 * under CI it fails.
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Extent } from '../../src/block/block-device.js';
import { CheckedDevice } from '../../src/block/checked-device.js';
import { nativeFs, nativeFsUnavailableReason } from '../../src/block/native-fs.js';
import { RawFileDevice } from '../../src/block/raw-file-device.js';
import { BackingExtentCache } from '../../src/formats/backing-extent-cache.js';

const MiB = 1024 * 1024;
const SIZE = 200 * MiB; // > 3 cache chunks of 64 MiB, last one partial

function gateNative(): boolean {
  if (nativeFs) return true;
  if (process.env.CI === 'true') throw new Error(`native addon unavailable in CI: ${nativeFsUnavailableReason}`);
  console.warn(`\n*** SKIPPING backing-extent-cache tests: ${nativeFsUnavailableReason} ***\n`);
  return false;
}
const sparse = gateNative();

let dir: string;
let device: CheckedDevice;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cownbd-extcache-'));
  const file = path.join(dir, 'base.img');
  const fh = await open(file, 'w');
  await fh.truncate(SIZE);
  // Data islands, some straddling the 64 MiB chunk boundaries.
  const islands = [
    [0, 1 * MiB],
    [10 * MiB, 4096],
    [63 * MiB, 2 * MiB],
    [100 * MiB, 28 * MiB + 512 * 1024],
    [199 * MiB, MiB],
  ] as const;
  for (const [at, len] of islands) await fh.write(Buffer.alloc(len, 0xa5), 0, len, at);
  await fh.close();
  device = new CheckedDevice(await RawFileDevice.open(file, { readOnly: true }));
});
afterAll(async () => {
  await device?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Byte-by-kind map of extents, so differently split but equal answers compare equal. */
function flatten(extents: readonly Extent[]): string {
  const out: string[] = [];
  for (const e of extents) {
    const last = out.length > 0 ? out[out.length - 1]!.split(':') : undefined;
    if (last && Number(last[1]) === e.flags && Number(last[2]) === e.depth) {
      out[out.length - 1] = `${Number(last[0]) + e.length}:${e.flags}:${e.depth}`;
    } else out.push(`${e.length}:${e.flags}:${e.depth}`);
  }
  return out.join(' ');
}

async function direct(offset: number, length: number): Promise<Extent[]> {
  const out: Extent[] = [];
  let covered = 0;
  while (covered < length) {
    const got = await device.blockStatus(offset + covered, length - covered);
    for (const e of got) {
      out.push(e);
      covered += e.length;
    }
  }
  return out;
}

describe.runIf(sparse)('BackingExtentCache', () => {
  it('answers exactly like the device for ranges across chunks and inside extents', async () => {
    const cache = new BackingExtentCache(device);
    const ranges: Array<[number, number]> = [
      [0, SIZE],
      [0, 4096],
      [512 * 1024, MiB],
      [10 * MiB - 512, 8192],
      [62 * MiB, 4 * MiB],
      [64 * MiB, 64 * MiB],
      [127 * MiB, 2 * MiB],
      [150 * MiB, SIZE - 150 * MiB],
      [SIZE - 512, 512],
    ];
    let seed = 7;
    for (let i = 0; i < 40; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const off = (seed % (SIZE / 512)) * 512;
      seed = (seed * 1103515245 + 12345) >>> 0;
      ranges.push([off, Math.min(SIZE - off, ((seed % 8192) + 1) * 512)]);
    }
    for (const [off, len] of ranges) {
      const got = await cache.extents(off, len);
      expect(got.reduce((n, e) => n + e.length, 0), `length of ${off}+${len}`).toBe(len);
      expect(flatten(got), `extents of ${off}+${len}`).toBe(flatten(await direct(off, len)));
    }
  });

  it('caches the following chunks from the same answers (look-ahead): later chunks cost no query', async () => {
    const spy = vi.spyOn(device, 'blockStatus');
    try {
      const cache = new BackingExtentCache(device);
      await cache.extents(0, 4096);
      const afterFirst = spy.mock.calls.length;
      // 200 MiB with 5 data islands: the whole file fits one look-ahead.
      for (const off of [70 * MiB, 130 * MiB, 199 * MiB]) {
        const got = await cache.extents(off, MiB);
        expect(flatten(got)).toBe(flatten(await direct(off, MiB)));
      }
      expect(spy.mock.calls.length - afterFirst).toBe(3); // only the direct() comparisons
    } finally {
      spy.mockRestore();
    }
  });

  it('asks the device once per chunk, also for concurrent first queries', async () => {
    const spy = vi.spyOn(device, 'blockStatus');
    try {
      const cache = new BackingExtentCache(device);
      await Promise.all([cache.extents(0, MiB), cache.extents(MiB, MiB), cache.extents(2 * MiB, 60 * MiB)]);
      const afterFirst = spy.mock.calls.length;
      expect(afterFirst).toBeGreaterThan(0);
      for (let i = 0; i < 50; i++) await cache.extents(i * MiB, MiB);
      expect(spy.mock.calls.length).toBe(afterFirst);
    } finally {
      spy.mockRestore();
    }
  });
});
