/**
 * Where an export's data lives, from the device's own block status (the same
 * qemu:allocation-depth answer NBD clients get): bytes per layer of the chain
 * (depth 1 = the top overlay, 2 = its backing, …; 0 = no layer, reads as zeros) and a
 * coarse map of the top layer for the status page's picture (fraction of each of N equal
 * slices of the disk that the top layer holds).
 *
 * Format-agnostic on purpose: every driver answers blockStatus, so raw, cow, add-cow and
 * snapshot chains are measured the same way. Bounded: at most MAX_EXTENTS extents are
 * walked (a pathological fragmentation stops early and says so with `complete: false`).
 *
 * Shares the event loop with the NBD data path: a driver answering blockStatus from
 * memory resolves at once, so without a pause a long walk would run as one burst of
 * microtasks and hold every client's reply back. The walk yields to the event loop (a
 * macrotask) every YIELD_EVERY extents, and stops (AllocationAborted) once `alive()` says
 * the device is going away.
 */
import type { BlockDevice } from '../block/block-device.js';

const MAX_EXTENTS = 4_000_000;
const YIELD_EVERY = 2048;

/** The device was closing while it was measured: the figures are incomplete. */
export class AllocationAborted extends Error {
  override name = 'AllocationAborted';
}

export interface Allocation {
  readonly size: number;
  /** bytesByDepth[d] = bytes whose data comes from depth d (index 0: unallocated). */
  readonly bytesByDepth: number[];
  /** Fraction (0..1) of each slice held by the top layer; present when buckets > 0. */
  readonly top?: number[];
  readonly complete: boolean;
}

export async function measureAllocation(device: BlockDevice, buckets = 0, alive: () => boolean = () => true): Promise<Allocation> {
  const size = device.size;
  const bytesByDepth: number[] = [0, 0];
  const slice = buckets > 0 ? size / buckets : 0;
  const top = buckets > 0 ? new Array<number>(buckets).fill(0) : undefined;
  let pos = 0;
  let walked = 0;
  if (!device.capabilities.blockStatus) {
    bytesByDepth[1] = size;
    top?.fill(1);
    return { size, bytesByDepth, top, complete: true };
  }
  let nextYield = YIELD_EVERY;
  while (pos < size && walked < MAX_EXTENTS) {
    if (walked >= nextYield) {
      nextYield = walked + YIELD_EVERY;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    if (!alive()) throw new AllocationAborted('the device closed while its allocation was measured');
    const extents = await device.blockStatus(pos, size - pos);
    if (extents.length === 0) break;
    for (const e of extents) {
      const len = Math.min(e.length, size - pos);
      bytesByDepth[e.depth] = (bytesByDepth[e.depth] ?? 0) + len;
      if (top && e.depth === 1) addToSlices(top, slice, pos, pos + len);
      pos += len;
      walked++;
    }
  }
  for (let d = 0; d < bytesByDepth.length; d++) bytesByDepth[d] ??= 0;
  return { size, bytesByDepth, top: top?.map((f) => Math.min(1, f / slice)), complete: pos >= size };
}

/** Add the bytes of [start, end) to the slices they cross. */
function addToSlices(top: number[], slice: number, start: number, end: number): void {
  let i = Math.floor(start / slice);
  while (start < end && i < top.length) {
    const sliceEnd = (i + 1) * slice;
    const upto = Math.min(end, sliceEnd);
    top[i]! += upto - start;
    start = upto;
    i++;
  }
}
