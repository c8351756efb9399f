/**
 * The model-based property suite over EVERY cow layout the driver writes in place: crafted
 * v1, v2, broken v3 and both QEMU layouts (from the independent byte-table generator), with
 * a sector count that is a multiple of 64 so every sector is representable even under the
 * v1/v2 bitmap rounding bug. Writes, zeroes and trims must read back exactly, survive
 * flush + reopen in the file's own layout, and never touch the backing file.
 */
import { utimesSync } from 'node:fs';
import { openImage } from '../../src/formats/open-image.js';
import { inspectCowFile } from '../../src/formats/cow/index.js';
import { writeCraftedCow, type CraftLayout } from '../helpers/cow-craft.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { deviceModelSuite, type ModelFixture } from './device-model.suite.js';
import { expect } from 'vitest';

const SIZE = 256 * 1024; // 512 sectors
const MTIME = 1_600_000_000;

function craftedFixture(layout: CraftLayout): () => Promise<ModelFixture> {
  return async () => {
    const tmp = makeTempDir(`cow-${layout}-`);
    const backing = tmp.file('base.img');
    createPatternedImage(backing, SIZE, 5);
    utimesSync(backing, MTIME, MTIME);
    const cow = tmp.file('ov.cow');
    writeCraftedCow(cow, { layout, backingPath: backing, size: SIZE, mtime: MTIME });
    const open = async () => {
      // Writing must never convert the file to another layout (UML's switch does, and loses data).
      expect((await inspectCowFile(cow)).layout).toBe(layout);
      return openImage(cow, layout.startsWith('qemu') ? { layout } : {});
    };
    return { backingPath: backing, open, reopen: open, cleanup: async () => tmp.cleanup() };
  };
}

for (const layout of ['v1', 'v2', 'v3-broken', 'qemu-i386', 'qemu-x86_64'] as const) {
  deviceModelSuite(`cow ${layout} (crafted) over raw`, craftedFixture(layout), { numRuns: 12, maxOps: 12 });
}
