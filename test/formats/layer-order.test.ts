/**
 * Layer order through a four-level chain built with the public APIs:
 *
 *   base.img (raw) ← c1.cow (cow) ← a2.add-cow (+ a2.img) ← c3.cow (cow over add-cow)
 *
 * Every layer writes its own pattern (and one layer zeroes a range) in ranges that overlap
 * the layers below, including a spot where all four hold data, partial sectors, partial
 * add-cow clusters (copy-on-write fill from below) and the partial last sector past the odd
 * end of the base. Then each layer is opened as the top of the stack and must read exactly
 * as an expected image computed here from the list of writes alone; and its block status
 * must report qemu:allocation-depth per byte: 1 for the top layer's own data, 2 for the
 * layer below it, …, the raw base's depth for the rest of its bytes (a raw file owns even
 * its holes, as in qemu), and 0 past the end of the base.
 *
 * The same depth maps are then checked over the wire (the real server, nbdinfo --map=
 * qemu:allocation-depth) and the top of the stack is copied out with nbdcopy.
 *
 * Allocation units are part of the expectation: a cow layer allocates whole 512-byte
 * sectors, an add-cow layer whole clusters (docs/cow-format.md#model,
 * docs/add-cow-format.md#io).
 */
import { readFileSync, utimesSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../src/block/block-device.js';
import { createCow } from '../../src/formats/cow/index.js';
import { createAddCow, openImage, type OpenImageOptions } from '../../src/formats/open-image.js';
import { mustSucceed, nbdcopy, nbdinfoMap } from '../helpers/clients.js';
import { createPatternedImage, makeTempDir, pattern, sha256File, type TempDir } from '../helpers/images.js';
import { startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const BASE_SIZE = 1_050_000; // odd: the last sector of the overlays is partly past the base
const SIZE = Math.ceil(BASE_SIZE / 512) * 512; // every overlay's virtual size
const CLUSTER = 64 * 1024; // add-cow default; SIZE is not a multiple of it either
const hasNbdinfo = requireTool('nbdinfo');
const hasNbdcopy = requireTool('nbdcopy');

type Op = { kind: 'write'; offset: number; length: number; seed: number } | { kind: 'zero'; offset: number; length: number };

interface Layer {
  readonly name: string;
  readonly file: string;
  /** Allocation unit of the layer's bitmap (0 = raw: owns every byte of its file). */
  readonly unit: number;
  readonly open: (options?: OpenImageOptions) => Promise<BlockDevice>;
  readonly ops: readonly Op[];
  /** `cownbd serve` arguments that open this layer as the top of the stack. */
  readonly serveArgs: readonly string[];
}

const w = (offset: number, length: number, seed: number): Op => ({ kind: 'write', offset, length, seed });
const z = (offset: number, length: number): Op => ({ kind: 'zero', offset, length });

// Ranges chosen so that layers overlap pairwise and all four meet around 70,000..95,000.
const OPS_C1: Op[] = [w(0, 100_000, 11), w(300_123, 200_000, 12), w(560_000, 150_000, 13), w(1_040_001, SIZE - 1_040_001, 14)];
const OPS_A2: Op[] = [
  w(50_000, 100_000, 21), // crosses cluster boundaries at 65,536 and 131,072: COW-fill head and tail
  w(250_000, 100_000, 22),
  w(420_003, 3000, 23), // inside one cluster over a c1 hole: fill from the base
  z(600_000, 70_000), // zeros must hide c1's data and the base
  w(1_048_000, SIZE - 1_048_000, 24), // the partial last cluster
];
const OPS_C3: Op[] = [w(70_000, 25_000, 31), w(120_001, 300_000, 32), z(640_000, 1000), w(SIZE - 700, 700, 33), w(777_777, 1, 34)];

/** The view of the top layer after applying the writes of every layer up to `depth`. */
function expectedImage(layers: readonly Layer[], top: number): Buffer {
  const img = Buffer.alloc(top === 0 ? BASE_SIZE : SIZE);
  pattern(0, BASE_SIZE, 7).copy(img, 0);
  for (let i = 1; i <= top; i++) {
    for (const op of layers[i]!.ops) {
      if (op.kind === 'write') pattern(op.offset, op.length, op.seed).copy(img, op.offset);
      else img.fill(0, op.offset, op.offset + op.length);
    }
  }
  return img;
}

/** qemu:allocation-depth per byte when layer `top` is opened as the top of the stack. */
function expectedDepths(layers: readonly Layer[], top: number): Uint8Array {
  const size = top === 0 ? BASE_SIZE : SIZE;
  const depth = new Uint8Array(size);
  depth.fill(top + 1, 0, BASE_SIZE); // the raw base owns all of its bytes, holes included
  for (let i = 1; i <= top; i++) {
    const unit = layers[i]!.unit;
    for (const op of layers[i]!.ops) {
      const start = Math.floor(op.offset / unit) * unit;
      const end = Math.min(size, Math.ceil((op.offset + op.length) / unit) * unit);
      depth.fill(top - i + 1, start, end);
    }
  }
  return depth;
}

async function applyOps(dev: BlockDevice, ops: readonly Op[]): Promise<void> {
  for (const op of ops) {
    if (op.kind === 'write') await dev.write(op.offset, pattern(op.offset, op.length, op.seed));
    else await dev.writeZeroes(op.offset, op.length);
  }
  await dev.flush();
}

async function depthsOf(dev: BlockDevice): Promise<Uint8Array> {
  const got = new Uint8Array(dev.size).fill(255);
  let pos = 0;
  while (pos < dev.size) {
    const extents = await dev.blockStatus(pos, dev.size - pos);
    expect(extents.length).toBeGreaterThan(0);
    for (const e of extents) {
      const n = Math.min(e.length, dev.size - pos);
      expect(n).toBeGreaterThan(0);
      got.fill(e.depth, pos, pos + n);
      pos += n;
      if (pos >= dev.size) break;
    }
  }
  return got;
}

/** First byte where two depth maps differ, described for the failure message. */
function firstDifference(got: Uint8Array, want: Uint8Array): string | undefined {
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      let end = i;
      while (end < want.length && got[end] === got[i] && want[end] === want[i]) end++;
      return `bytes ${i}..${end - 1}: depth ${got[i]}, expected ${want[i]}`;
    }
  }
  return got.length === want.length ? undefined : `length ${got.length}, expected ${want.length}`;
}

describe('layer order: raw ← cow ← add-cow ← cow', () => {
  let tmp: TempDir;
  let layers: Layer[];
  let baseSha: string;

  beforeAll(async () => {
    tmp = makeTempDir('layer-order-');
    const base = tmp.file('base.img');
    const c1 = tmp.file('c1.cow');
    const a2 = tmp.file('a2.add-cow');
    const c3 = tmp.file('c3.cow');
    createPatternedImage(base, BASE_SIZE, 7);
    utimesSync(base, 1_600_000_000, 1_600_000_000);
    baseSha = sha256File(base);

    layers = [
      { name: 'base.img (raw)', file: base, unit: 0, open: (o) => openImage(base, { format: 'raw', ...o }), ops: [], serveArgs: [base, '-f', 'raw'] },
      { name: 'c1.cow', file: c1, unit: 512, open: (o) => openImage(c1, o), ops: OPS_C1, serveArgs: [c1] },
      { name: 'a2.add-cow', file: a2, unit: CLUSTER, open: (o) => openImage(a2, o), ops: OPS_A2, serveArgs: [a2] },
      {
        name: 'c3.cow',
        file: c3,
        unit: 512,
        open: (o) => openImage(c3, { backingFormat: 'add-cow', ...o }),
        ops: OPS_C3,
        serveArgs: [c3, '--backing-format', 'add-cow'],
      },
    ];

    // Each layer is created over the finished layer below, then written through the stack.
    await createCow(c1, { backingFile: base });
    await writeLayer(layers[1]!);
    await createAddCow(a2, { imageFile: 'a2.img', backingFile: c1, backingFormat: 'cow' });
    await writeLayer(layers[2]!);
    const a2Size = await sizeOf(layers[2]!);
    expect(a2Size).toBe(SIZE);
    await createCow(c3, { backingFile: a2, backingSize: a2Size });
    await writeLayer(layers[3]!);
  });

  afterAll(() => tmp?.cleanup());

  async function writeLayer(layer: Layer): Promise<void> {
    const dev = await layer.open();
    try {
      await applyOps(dev, layer.ops);
    } finally {
      await dev.close();
    }
  }

  async function sizeOf(layer: Layer): Promise<number> {
    const dev = await layer.open({ readOnly: true });
    const size = dev.size;
    await dev.close();
    return size;
  }

  for (const top of [0, 1, 2, 3]) {
    it(`depth ${top + 1}: the stack topped by layer ${top} reads as the expected image`, async () => {
      const layer = layers[top]!;
      const want = expectedImage(layers, top);
      const dev = await layer.open({ readOnly: true });
      try {
        expect(dev.size).toBe(want.length);
        const whole = Buffer.alloc(dev.size);
        await dev.read(0, whole);
        expect(whole.equals(want), `${layer.name}: full read differs from the expected image`).toBe(true);
        // Odd-sized reads at odd offsets cross sector, cluster and layer boundaries.
        for (let off = 0; off < dev.size; off += 77_777) {
          const n = Math.min(9_999, dev.size - off);
          const part = Buffer.alloc(n);
          await dev.read(off, part);
          expect(part.equals(want.subarray(off, off + n)), `${layer.name}: read at ${off}+${n}`).toBe(true);
        }
      } finally {
        await dev.close();
      }
    });

    it(`depth ${top + 1}: qemu:allocation-depth names the layer that holds each byte`, async () => {
      const layer = layers[top]!;
      const dev = await layer.open({ readOnly: true });
      try {
        expect(dev.capabilities.blockStatus || top === 0).toBe(true);
        const got = await depthsOf(dev);
        const want = expectedDepths(layers, top);
        expect(firstDifference(got, want), layer.name).toBeUndefined();
        // Every layer of the stack shows up somewhere (the chain really is that deep).
        for (let d = 1; d <= top + 1; d++) expect(got.includes(d), `${layer.name}: depth ${d} present`).toBe(true);
      } finally {
        await dev.close();
      }
    });
  }

  for (const top of [1, 2, 3]) {
    it.runIf(hasNbdinfo)(`depth ${top + 1} over NBD: nbdinfo --map=qemu:allocation-depth shows the same layers`, async () => {
      const layer = layers[top]!;
      const srv = await startServer([...layer.serveArgs, '-r']);
      try {
        const map = await nbdinfoMap(srv.uri(), 'qemu:allocation-depth');
        const got = new Uint8Array(SIZE).fill(255);
        for (const e of map) got.fill(e.type, e.offset, e.offset + e.length);
        expect(firstDifference(got, expectedDepths(layers, top)), `${layer.name} over NBD`).toBeUndefined();
      } finally {
        await srv.stop();
      }
    });
  }

  it.runIf(hasNbdcopy)('the top of the stack copied out with nbdcopy equals the expected image', async () => {
    const srv = await startServer([...layers[3]!.serveArgs, '-r']);
    try {
      const out = tmp.file('copy.img');
      mustSucceed(await nbdcopy([srv.uri(), out]));
      expect(readFileSync(out).equals(expectedImage(layers, 3))).toBe(true);
    } finally {
      await srv.stop();
    }
  });

  it('the base never changed', () => {
    expect(sha256File(layers[0]!.file)).toBe(baseSha);
  });
});
