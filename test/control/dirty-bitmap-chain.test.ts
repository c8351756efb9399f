/**
 * Dirty bitmaps against a chain that changes in the middle of a BLOCK_STATUS: the real cow
 * driver, the real SwappableDevice and a real live snapshot (no server: the snapshot must
 * land between two device calls of one request, which no client can time).
 *
 *   A written, snapshot 1, B written; a request for snap-1 reads [0, HALF) on the old chain
 *   (A at depth 2), then snapshot 2 stacks a layer, then reads [HALF, SIZE) on the new one
 *   (B at depth 2, snap-1 at depth 3). Judged with either chain's depths the mixed extents
 *   are wrong (A dirty, or B clean): DirtyBitmapView must see the swap and collect again.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import type { BlockDevice, Extent } from '../../src/block/block-device.js';
import { liveSnapshot } from '../../src/control/snapshot.js';
import { SwappableDevice } from '../../src/control/swappable-device.js';
import { openImage } from '../../src/formats/open-image.js';
import { DirtyBitmapView } from '../../src/server/dirty-bitmaps.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';

const SIZE = 1 << 20;
const HALF = SIZE / 2;
const A: [number, number] = [4096, 8192];
const B: [number, number] = [HALF + 4096, 4096];

/** Extents of [offset, offset + length), asking again when the device answers short. */
async function extents(device: BlockDevice, offset: number, length: number): Promise<Extent[]> {
  const out: Extent[] = [];
  for (let done = 0; done < length; ) {
    const got = await device.blockStatus(offset + done, length - done);
    for (const e of got) {
      out.push(e);
      done += e.length;
    }
  }
  return out;
}

function dirtyRanges(list: readonly Extent[], value: (e: Extent) => number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let off = 0;
  for (const e of list) {
    if (value(e) === 1) {
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === off) last[1] += e.length;
      else out.push([off, e.length]);
    }
    off += e.length;
  }
  return out;
}

describe.runIf(requireTool('uml_mkcow'))('dirty bitmaps over a changing chain', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('a snapshot between two device calls of one request makes it collect again; meanings stay by name', async () => {
    const base = createPatternedImage(tmp.file('base.img'), SIZE, 4);
    const top = tmp.file('vm.cow');
    execFileSync('uml_mkcow', ['-f', top, base]);
    const device = new SwappableDevice(await openImage(top));
    try {
      await device.write(A[0], Buffer.alloc(A[1], 0xaa));
      await liveSnapshot(device, top, undefined);
      await device.write(B[0], Buffer.alloc(B[1], 0xbb));
      const view = new DirtyBitmapView(device, [
        { id: 3, name: 'qemu:dirty-bitmap:snap-1' },
        { id: 4, name: 'qemu:dirty-bitmap:overlay' },
        { id: 5, name: 'qemu:dirty-bitmap:snap-9' },
      ]);
      let attempts = 0;
      const { result, values } = await view.collect(async () => {
        const first = await extents(device, 0, HALF);
        if (attempts++ === 0) await liveSnapshot(device, top, undefined);
        return [...first, ...(await extents(device, HALF, HALF))];
      });
      expect(values.map((v) => v.id)).toEqual([3, 4, 5]);
      expect(dirtyRanges(result, values[0]!.value), 'snap-1: only what was written after it').toEqual([B]);
      expect(dirtyRanges(result, values[1]!.value), 'overlay: everything written').toEqual([A, B]);
      // A name whose layer does not exist answers like "overlay" (a superset).
      expect(dirtyRanges(result, values[2]!.value)).toEqual([A, B]);
      expect(attempts).toBe(2);
      expect(device.chainGeneration).toBe(2);

      // Without a swap: one pass; snap-2 is what came after it, snap-1 grows.
      const C: [number, number] = [HALF + 65536, 4096];
      await device.write(C[0], Buffer.alloc(C[1], 0xcc));
      const view2 = new DirtyBitmapView(device, [
        { id: 3, name: 'qemu:dirty-bitmap:snap-2' },
        { id: 4, name: 'qemu:dirty-bitmap:snap-1' },
      ]);
      let calls = 0;
      const again = await view2.collect(() => {
        calls++;
        return extents(device, 0, SIZE);
      });
      expect(calls).toBe(1);
      expect(dirtyRanges(again.result, again.values[0]!.value)).toEqual([C]);
      expect(dirtyRanges(again.result, again.values[1]!.value)).toEqual([B, C]);

      // The same view after snapshot 3: its cached chain is stale and must be read again.
      await liveSnapshot(device, top, undefined);
      const later = await view2.collect(() => extents(device, 0, SIZE));
      expect(dirtyRanges(later.result, later.values[0]!.value), 'snap-2 after snapshot 3').toEqual([C]);
      expect(dirtyRanges(later.result, later.values[1]!.value), 'snap-1 after snapshot 3').toEqual([B, C]);
    } finally {
      await device.close();
    }
  });
});
