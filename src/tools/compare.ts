/**
 * `cownbd compare A B`: do two images (any chains cownbd opens: raw with -f raw, cow,
 * add-cow, qcow2, s3://) hold the same guest-visible bytes? Verdicts, messages and exit
 * codes are qemu-img compare's (docs/image-tool.md "compare"):
 *
 *   0  "Images are identical."
 *   1  "Content mismatch at offset N!"       N: the first differing 512-byte sector
 *      "Strict mode: Image size mismatch!"  (-s and the sizes differ)
 *      "Strict mode: Offset N block status mismatch!"  (-s: the sides' block status
 *                                            differs: zero, hole, allocated, run to the end)
 *   2  an error (the caller prints it)
 *
 * Sizes that differ without -s: the common part is compared, then "Warning: Image size
 * mismatch!" and the larger image's extra part must read as zeros.
 *
 * Work is bounded by what the images hold, not their size: both sides' block status is
 * walked together and a range both report as zeros is skipped unread; a range one side
 * reports as zeros only reads the other. Reads are 2 MiB at most (qemu-img's buffer),
 * both sides at once.
 */
import { EXTENT_HOLE, EXTENT_ZERO, type BlockDevice, type Extent } from '../block/block-device.js';
import { openChain, type ChainOptions } from './chain.js';

export interface CompareOptions {
  readonly first: ChainOptions;
  readonly second: ChainOptions;
  /** qemu-img compare -s: sizes and block status must match too. */
  readonly strict?: boolean;
}

export interface CompareResult {
  readonly exitCode: 0 | 1;
  /** What qemu-img prints on stdout, one entry a line. */
  readonly lines: string[];
}

const SECTOR = 512;
const BUF = 2 * 1024 * 1024;

export async function runCompare(a: string, b: string, options: CompareOptions): Promise<CompareResult> {
  const devA = await openChain(a, options.first);
  try {
    const devB = await openChain(b, options.second);
    try {
      return await compareDevices(devA, devB, Boolean(options.strict));
    } finally {
      await devB.close();
    }
  } finally {
    await devA.close();
  }
}

async function compareDevices(a: BlockDevice, b: BlockDevice, strict: boolean): Promise<CompareResult> {
  if (strict && a.size !== b.size) return { exitCode: 1, lines: ['Strict mode: Image size mismatch!'] };
  const zeros = Buffer.alloc(BUF);
  const common = Math.min(a.size, b.size);
  let pos = 0;
  while (pos < common) {
    const [sa, sb] = await Promise.all([firstExtent(a, pos, common - pos), firstExtent(b, pos, common - pos)]);
    const len = Math.min(sa.length, sb.length, BUF);
    const zeroA = (sa.flags & EXTENT_ZERO) !== 0;
    const zeroB = (sb.flags & EXTENT_ZERO) !== 0;
    if (strict && statusDiffers(sa, sb, pos, common)) {
      return { exitCode: 1, lines: [`Strict mode: Offset ${pos} block status mismatch!`] };
    }
    if (!(zeroA && zeroB)) {
      const [bufA, bufB] = await Promise.all([zeroA ? zeros.subarray(0, len) : readAt(a, pos, len), zeroB ? zeros.subarray(0, len) : readAt(b, pos, len)]);
      const at = firstDifferentSector(bufA, bufB);
      if (at !== undefined) return { exitCode: 1, lines: [`Content mismatch at offset ${pos + at}!`] };
    }
    pos += len;
  }
  if (a.size === b.size) return { exitCode: 0, lines: ['Images are identical.'] };
  const lines = ['Warning: Image size mismatch!'];
  const larger = a.size > b.size ? a : b;
  const nonZero = await firstNonZero(larger, common, zeros);
  if (nonZero !== undefined) return { exitCode: 1, lines: [...lines, `Content mismatch at offset ${nonZero}!`] };
  return { exitCode: 0, lines: [...lines, 'Images are identical.'] };
}

/**
 * -s: qemu-img compares the whole status word of both sides, which besides zero / data /
 * allocated carries BDRV_BLOCK_EOF (the run reaches the end of the image): a dense raw file
 * (one data run to the end) and a sparse copy (data, then a hole) differ at offset 0.
 */
function statusDiffers(a: Extent, b: Extent, pos: number, size: number): boolean {
  const bits = (e: Extent): number => (e.flags & (EXTENT_ZERO | EXTENT_HOLE)) | (e.depth > 0 ? 4 : 0) | (pos + e.length >= size ? 8 : 0);
  return bits(a) !== bits(b);
}

/** The first sector at or after `from` that does not read as zeros, if any. */
async function firstNonZero(dev: BlockDevice, from: number, zeros: Buffer): Promise<number | undefined> {
  let pos = from;
  while (pos < dev.size) {
    const e = await firstExtent(dev, pos, dev.size - pos);
    const len = Math.min(e.length, BUF);
    if ((e.flags & EXTENT_ZERO) === 0) {
      const at = firstDifferentSector(await readAt(dev, pos, len), zeros.subarray(0, len));
      if (at !== undefined) return pos + at;
    }
    pos += len;
  }
  return undefined;
}

async function firstExtent(dev: BlockDevice, offset: number, length: number): Promise<Extent> {
  const got = await dev.blockStatus(offset, length);
  const e = got[0];
  if (!e || e.length <= 0) throw new Error(`block status at offset ${offset} returned no extent`);
  return e.length > length ? { ...e, length } : e;
}

async function readAt(dev: BlockDevice, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  await dev.read(offset, buf);
  return buf;
}

/** Offset (a multiple of 512 from the buffers' start) of the first sector that differs. */
export function firstDifferentSector(x: Buffer, y: Buffer): number | undefined {
  if (x.equals(y)) return undefined;
  for (let at = 0; at < x.length; at += SECTOR) {
    const end = Math.min(x.length, at + SECTOR);
    if (!x.subarray(at, end).equals(y.subarray(at, end))) return at;
  }
  return undefined;
}
