/**
 * Format-specific facts about the TOP layer of an open chain, for commit and rebase:
 * which byte ranges it holds itself, and where its backing file is.
 */
import type { BlockDevice } from '../block/block-device.js';
import type { CheckedDevice } from '../block/checked-device.js';
import { AddCowDevice } from '../formats/add-cow/index.js';
import { cowInspection, type CowInspection } from '../formats/cow/index.js';
import { ToolError } from './errors.js';

export interface TopLayer {
  readonly format: 'cow' | 'add-cow';
  /** Allocation unit: 512 (cow) or the cluster size (add-cow). */
  readonly unit: number;
  readonly backingPath: string | undefined;
  /** Format the backing is opened with. */
  readonly backingFormat: string | undefined;
  readonly cow?: CowInspection;
  readonly addCow?: AddCowDevice;
  /** Allocated byte ranges [start, end) of the top layer, clipped to the disk, in order. */
  runs(): Generator<[number, number]>;
  allocatedBytes(): number;
}

export function topLayer(dev: CheckedDevice, backingFormat?: string): TopLayer {
  const size = dev.size;
  const cow = cowInspection(dev);
  if (cow) {
    const bm = cow.bitmap;
    return {
      format: 'cow',
      unit: 512,
      backingPath: cow.backingFile.resolved,
      backingFormat: backingFormat ?? 'raw',
      cow,
      *runs() {
        for (let s = 0; s < bm.sectors; ) {
          const n = bm.runLength(s, bm.sectors - s);
          if (n <= 0) break;
          if (bm.isAllocated(s)) yield [s * 512, Math.min(size, (s + n) * 512)];
          s += n;
        }
      },
      allocatedBytes: () => bm.countAllocated() * 512,
    };
  }
  const driver: BlockDevice = dev.driver;
  if (driver instanceof AddCowDevice) {
    const bm = driver.bitmap;
    const cluster = driver.header.clusterSize;
    return {
      format: 'add-cow',
      unit: cluster,
      backingPath: driver.allAllocated ? undefined : driver.backingPath,
      backingFormat: backingFormat ?? (driver.header.backingFormat || undefined),
      addCow: driver,
      *runs() {
        if (driver.allAllocated) {
          if (size > 0) yield [0, size];
          return;
        }
        for (let c = 0; c < bm.bitCount; ) {
          const n = bm.runLength(c, bm.bitCount - c);
          if (n <= 0) break;
          if (bm.get(c)) yield [c * cluster, Math.min(size, (c + n) * cluster)];
          c += n;
        }
      },
      allocatedBytes: () => driver.allocatedBytes,
    };
  }
  throw new ToolError(`${dev.describe().path ?? 'image'}: a raw image has no backing file (nothing to commit or rebase)`);
}
