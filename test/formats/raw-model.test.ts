/**
 * The shared model-based property suite (device-model.suite.ts) over RAW images: the
 * device that exports use directly and that every overlay chain ends in. Variants: an
 * odd-sized fully patterned file opened through openImage (the public entry point, magic
 * probing included), a sparse file larger than 16 MiB opened as a bare RawFileDevice, and
 * the portable path without the native addon (no hole punching: TRIM is not offered and
 * WRITE_ZEROES writes zeros).
 */
import { readFileSync } from 'node:fs';
import type { BlockDevice } from '../../src/block/block-device.js';
import { FileIo } from '../../src/block/file-io.js';
import { defaultIoPolicy, withoutNative } from '../../src/block/io-policy.js';
import { RawFileDevice } from '../../src/block/raw-file-device.js';
import { openImage } from '../../src/formats/open-image.js';
import { createPatternedImage, createRawImage, makeTempDir } from '../helpers/images.js';
import { deviceModelSuite, type ModelFixture } from './device-model.suite.js';

type Opener = (file: string) => Promise<BlockDevice>;

function rawFixture(size: number, sparse: boolean, openDevice: Opener): () => Promise<ModelFixture> {
  return async () => {
    const tmp = makeTempDir('raw-model-');
    const file = tmp.file('disk.img');
    if (sparse) {
      const page = 16 << 20;
      createRawImage(file, size, [[0, 70_000], [page - 40_000, 80_000], [size - 5000, 5000]], 5);
    } else {
      createPatternedImage(file, size, 5);
    }
    return {
      initial: readFileSync(file),
      open: () => openDevice(file),
      reopen: () => openDevice(file),
      cleanup: async () => tmp.cleanup(),
    };
  };
}

const viaOpenImage: Opener = (file) => openImage(file);
const viaRawDevice: Opener = (file) => RawFileDevice.open(file);
// Through openImage: the driver contract leaves zeroing to CheckedDevice when the device
// cannot zero natively, as it is without the addon.
const withoutAddon: Opener = (file) => openImage(file, { format: 'raw', io: new FileIo(withoutNative(defaultIoPolicy())) });

deviceModelSuite('raw via openImage, odd size 1,000,000', rawFixture(1_000_000, false, viaOpenImage), { numRuns: 30 });
deviceModelSuite('raw RawFileDevice, sparse 16 MiB + 12,900', rawFixture((16 << 20) + 12_900, true, viaRawDevice), {
  numRuns: 8,
  maxOps: 15,
});
deviceModelSuite('raw without the native addon, 1 MiB', rawFixture(1 << 20, false, withoutAddon), { numRuns: 15 });
