/**
 * `cownbd map FILE [--json]`: the allocation map of a chain, the same information an NBD
 * client gets from `base:allocation` + `qemu:allocation-depth` on the served image
 * (the server and this command ask the same BlockDevice.blockStatus), merged into
 * maximal runs.
 *
 *   depth 0  no layer holds the range (reads as zeros, e.g. past a short backing file)
 *   depth 1  the named file (cow: its data area; add-cow: its image file)
 *   depth 2  its backing file, and so on
 *   zero     reads as zeros; hole: not allocated in the layer's file (sparse); data = !hole
 *
 * Differs from `qemu-img map`, whose depth is 0-based (0 = top layer): we use the NBD
 * qemu:allocation-depth numbering so the two views compare directly.
 */
import { EXTENT_HOLE, EXTENT_ZERO } from '../block/block-device.js';
import { mergeExtents } from '../block/checked-device.js';
import { layerFiles, openChain, type ChainOptions } from './chain.js';

export interface MapExtent {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  hole: boolean;
  data: boolean;
  /** File holding the range (null at depth 0). */
  file: string | null;
}

export interface MapJson {
  filename: string;
  virtualSize: number;
  extents: MapExtent[];
}

const ASK = 1 << 30;

export async function runMap(file: string, options: ChainOptions): Promise<MapJson> {
  const dev = await openChain(file, options);
  try {
    const files = layerFiles(dev);
    const extents: MapExtent[] = [];
    let pos = 0;
    while (pos < dev.size) {
      const got = mergeExtents(await dev.blockStatus(pos, Math.min(ASK, dev.size - pos)));
      for (const e of got) {
        const prev = extents[extents.length - 1];
        const zero = (e.flags & EXTENT_ZERO) !== 0;
        const hole = (e.flags & EXTENT_HOLE) !== 0;
        if (prev && prev.depth === e.depth && prev.zero === zero && prev.hole === hole) prev.length += e.length;
        else extents.push({ start: pos, length: e.length, depth: e.depth, zero, hole, data: !hole, file: e.depth > 0 ? (files[e.depth - 1] ?? null) : null });
        pos += e.length;
      }
    }
    return { filename: file, virtualSize: dev.size, extents };
  } finally {
    await dev.close();
  }
}

export function formatMapText(m: MapJson): string {
  const rows = [`${'Offset'.padEnd(20)}${'Length'.padEnd(20)}${'Depth'.padEnd(7)}${'Type'.padEnd(12)}File`];
  for (const e of m.extents) {
    const type = e.hole ? (e.zero ? 'hole,zero' : 'hole') : e.zero ? 'data,zero' : 'data';
    rows.push(`${`0x${e.start.toString(16)}`.padEnd(20)}${`0x${e.length.toString(16)}`.padEnd(20)}${String(e.depth).padEnd(7)}${type.padEnd(12)}${e.file ?? '-'}`);
  }
  return `${rows.join('\n')}\n`;
}
