/**
 * A 1 TiB cow overlay costs memory for what was written, not for its size: its 256 MiB
 * bitmap is never loaded whole (pages on demand, allocation-bitmap.ts), its bitmap region
 * stays sparse on disk, and scattered writes survive a reopen. Structural assertions
 * (resident pages, allocated blocks), no timing.
 */
import { statSync, truncateSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../src/formats/open-image.js';
import { cowInspection, createCow, inspectCowFile } from '../../src/formats/cow/index.js';
import { makeTempDir, pattern, type TempDir } from '../helpers/images.js';

const TiB = 2 ** 40;
const WRITES = 200;
// Scattered 4 KiB writes, each in its own 16 MiB stretch of disk (its own bitmap page).
const offsets = Array.from({ length: WRITES }, (_, i) => i * 5000 * 2 ** 20 + (i % 7) * 4096);

let tmp: TempDir;
beforeEach(async () => {
  tmp = makeTempDir('cow-bitmap-memory-');
  writeFileSync(tmp.file('base.img'), '');
  truncateSync(tmp.file('base.img'), TiB);
  await createCow(tmp.file('vm.cow'), { backingFile: tmp.file('base.img') });
});
afterEach(() => tmp.cleanup());

describe('cow overlay of 1 TiB', () => {
  it('opens with no bitmap page in memory, keeps only written pages, and reads its writes back after reopen', async () => {
    let dev = await openImage(tmp.file('vm.cow'));
    let bm = cowInspection(dev)!.bitmap;
    expect(bm.residentPages()).toBe(0);
    expect(bm.runLength(0, bm.sectors)).toBe(bm.sectors); // whole-disk scan: still nothing resident
    expect(bm.residentPages()).toBe(0);
    for (const [i, off] of offsets.entries()) await dev.write(off, pattern(off, 4096, i));
    expect(bm.residentPages()).toBe(WRITES);
    await dev.flush();
    await dev.close();

    // Only the written bitmap pages (plus the data) were allocated on disk.
    const st = statSync(tmp.file('vm.cow'));
    expect(st.blocks * 512).toBeLessThan(WRITES * (4096 + 4096) + 64 * 1024);
    expect((await inspectCowFile(tmp.file('vm.cow'))).allocatedSectors).toBe(WRITES * 8);

    dev = await openImage(tmp.file('vm.cow'));
    bm = cowInspection(dev)!.bitmap;
    expect(bm.residentPages()).toBe(0);
    try {
      for (const [i, off] of offsets.entries()) {
        const got = Buffer.alloc(4096);
        await dev.read(off, got);
        expect(got.equals(pattern(off, 4096, i))).toBe(true);
      }
      let runs = 0;
      for (let s = 0; s < bm.sectors; s += bm.runLength(s, bm.sectors - s)) if (bm.isAllocated(s)) runs++;
      expect(runs).toBe(WRITES);
      expect(bm.countAllocated()).toBe(WRITES * 8);
    } finally {
      await dev.close();
    }
  });
});
