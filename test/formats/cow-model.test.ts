/**
 * Model-based property test of the cow driver over a raw backing file (shared suite in
 * device-model.suite.ts): odd-sized disk (partial last sector past the backing EOF), a
 * multiple of 512, and a disk larger than one 4 KiB bitmap page (16 MiB of sectors).
 */
import { utimesSync } from 'node:fs';
import { openImage } from '../../src/formats/open-image.js';
import { createCow } from '../../src/formats/cow/index.js';
import { createPatternedImage, createRawImage, makeTempDir } from '../helpers/images.js';
import { deviceModelSuite, type ModelFixture } from './device-model.suite.js';

function cowFixture(size: number, sparse: boolean): () => Promise<ModelFixture> {
  return async () => {
    const tmp = makeTempDir('cow-model-');
    const backing = tmp.file('base.img');
    if (sparse) {
      const page = 16 << 20;
      createRawImage(backing, size, [[0, 70_000], [page - 40_000, 80_000], [size - 5000, 5000]], 3);
    } else {
      createPatternedImage(backing, size, 3);
    }
    utimesSync(backing, 1_600_000_000, 1_600_000_000);
    const cow = tmp.file('ov.cow');
    await createCow(cow, { backingFile: backing });
    return {
      backingPath: backing,
      open: () => openImage(cow),
      reopen: () => openImage(cow),
      cleanup: async () => tmp.cleanup(),
    };
  };
}

deviceModelSuite('cow over raw, odd size 1,000,000', cowFixture(1_000_000, false), { numRuns: 40 });
deviceModelSuite('cow over raw, 1 MiB', cowFixture(1 << 20, false), { numRuns: 30 });
deviceModelSuite('cow over raw, 16 MiB + 12,900 (crosses a bitmap page)', cowFixture((16 << 20) + 12_900, true), {
  numRuns: 8,
  maxOps: 15,
});
