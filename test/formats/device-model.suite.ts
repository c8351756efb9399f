/**
 * Shared model-based property suite for writable devices: the overlays (cow, add-cow) and
 * raw images.
 *
 * fast-check generates short programs of read / write / writeZeroes / trim / flush /
 * reopen operations at "interesting" offsets (sector, 4 KiB block and bitmap-page
 * boundaries, the last partial sector of odd-sized disks, plus whatever hot offsets the
 * caller names) and runs them against both the device and a plain in-memory Buffer.
 * Every read must equal the model. At the end the whole device is read and compared,
 * every ZERO extent reported by blockStatus must really read as zeros, and the backing
 * file's sha256 must be unchanged ("nothing ever writes to a backing image").
 *
 * Usage (one `describe` per call):
 *
 *   deviceModelSuite('cow over raw, odd size', async () => {
 *     ...create backing + overlay...
 *     return { open, reopen, backingPath, cleanup };
 *   }, { numRuns: 40 });
 *
 * Contract for the factory's fixture:
 *   - open(): the first open of a freshly created overlay; reopen(): open it again after
 *     the suite has flushed and closed the previous device (used for persistence).
 *   - backingPath (optional): the backing file; the fresh overlay must read exactly as
 *     that file, zero-padded (or truncated) to the device size, and it must never change.
 *   - initial (optional, instead of backingPath): what a fresh device reads as, for
 *     devices without a backing file (a raw image holds its own content). Default: zeros.
 *   - cleanup(): remove everything (called even when the property fails).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { EXTENT_ZERO, type BlockDevice } from '../../src/block/block-device.js';

export interface ModelFixture {
  open(): Promise<BlockDevice>;
  reopen(): Promise<BlockDevice>;
  backingPath?: string;
  initial?: Buffer;
  cleanup(): Promise<void>;
}

export interface DeviceModelOptions {
  /** fast-check runs (each run = one fresh fixture). Default 30. */
  numRuns?: number;
  /** Max operations per run. Default 25. */
  maxOps?: number;
  /** Max length of one I/O in bytes. Default 70_000 (spans >1 bitmap byte / several blocks). */
  maxLength?: number;
  /** Extra device offsets worth hitting (e.g. cluster or bitmap-page boundaries). */
  hotOffsets?: number[];
  /** trim leaves zeros (cow: yes). If false, trimmed bytes become "unspecified". */
  trimReadsZero?: boolean;
  /** fast-check seed, for reproducing a failure. */
  seed?: number;
  /** vitest timeout for the property (ms). Default 60 s. */
  timeoutMs?: number;
}

type Op =
  | { kind: 'read'; offset: number; length: number }
  | { kind: 'write'; offset: number; length: number; fill: number; fua: boolean }
  | { kind: 'zero'; offset: number; length: number; fua: boolean }
  | { kind: 'trim'; offset: number; length: number }
  | { kind: 'flush' }
  | { kind: 'reopen' }
  | { kind: 'parallel'; a: { offset: number; length: number; fill: number }; b: { offset: number; length: number; fill: number } };

const SHA = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Deterministic, position-dependent write payload so misplaced bytes are caught. */
function payload(offset: number, length: number, fill: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (fill + ((offset + i) * 31 + ((offset + i) >> 9))) & 0xff;
  return b;
}

export function deviceModelSuite(
  name: string,
  factory: () => Promise<ModelFixture>,
  opts: DeviceModelOptions = {},
): void {
  const numRuns = opts.numRuns ?? 30;
  const maxOps = opts.maxOps ?? 25;
  const maxLength = opts.maxLength ?? 70_000;
  const trimReadsZero = opts.trimReadsZero ?? true;

  describe(`device model: ${name}`, () => {
    it(
      'matches an in-memory model across write/zero/trim/flush/reopen; backing never changes',
      async () => {
        // Probe the size once so offsets can be generated within it.
        const probe = await factory();
        let size: number;
        try {
          const dev = await probe.open();
          size = dev.size;
          await dev.close();
        } finally {
          await probe.cleanup();
        }
        const hot = hotOffsetsFor(size, opts.hotOffsets ?? []);
        const offsetArb = fc.oneof(
          { weight: 3, arbitrary: fc.tuple(fc.constantFrom(...hot), fc.integer({ min: -1200, max: 1200 })).map(([h, d]) => h + d) },
          { weight: 1, arbitrary: fc.integer({ min: 0, max: size - 1 }) },
        );
        const lengthArb = fc.oneof(
          fc.integer({ min: 1, max: 1100 }),
          fc.constantFrom(512, 4096, 65536),
          fc.integer({ min: 1, max: maxLength }),
        );
        const range = fc.tuple(offsetArb, lengthArb).map(([o, l]) => {
          const offset = Math.max(0, Math.min(o, size - 1));
          return { offset, length: Math.max(1, Math.min(l, size - offset)) };
        });
        const fill = fc.integer({ min: 0, max: 255 });
        const opArb: fc.Arbitrary<Op> = fc.oneof(
          { weight: 4, arbitrary: range.map((r) => ({ kind: 'read' as const, ...r })) },
          { weight: 6, arbitrary: fc.tuple(range, fill, fc.boolean()).map(([r, f, fua]) => ({ kind: 'write' as const, ...r, fill: f, fua })) },
          { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, fua]) => ({ kind: 'zero' as const, ...r, fua })) },
          { weight: 1, arbitrary: range.map((r) => ({ kind: 'trim' as const, ...r })) },
          { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
          { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
          {
            weight: 2,
            arbitrary: fc
              .tuple(range, fill, range, fill)
              .map(([ra, fa, rb, fb]) => ({ kind: 'parallel' as const, a: { ...ra, fill: fa }, b: { ...rb, fill: fb } })),
          },
        );

        await fc.assert(
          fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: maxOps }), async (ops) => {
            await runProgram(factory, ops, trimReadsZero);
          }),
          { numRuns, ...(opts.seed !== undefined ? { seed: opts.seed } : {}), endOnFailure: true },
        );
      },
      opts.timeoutMs ?? 60_000,
    );
  });
}

/** Boundaries where format bugs live, clamped to the device. */
function hotOffsetsFor(size: number, extra: number[]): number[] {
  const set = new Set<number>([0, 512, 4096, 8 * 512, 64 * 512, 65536, 1 << 20]);
  // Bitmap-page boundaries for 1-bit-per-512-byte bitmaps with 4 KiB pages (16 MiB).
  for (let p = 16 << 20; p < size; p += 16 << 20) set.add(p);
  const lastSector = Math.floor((size - 1) / 512) * 512;
  set.add(lastSector);
  set.add(size - 1);
  set.add(Math.max(0, size - 4096));
  set.add(Math.floor(size / 2));
  for (const e of extra) set.add(e);
  return [...set].filter((o) => o >= 0 && o < size).sort((a, b) => a - b);
}

async function runProgram(factory: () => Promise<ModelFixture>, ops: Op[], trimReadsZero: boolean): Promise<void> {
  const fx = await factory();
  let dev: BlockDevice | undefined;
  try {
    const backingBytes = fx.backingPath ? readFileSync(fx.backingPath) : undefined;
    const backingBefore = backingBytes ? SHA(backingBytes) : undefined;
    dev = await fx.open();
    const size = dev.size;
    const model = Buffer.alloc(size);
    const initial = backingBytes ?? fx.initial;
    if (initial) initial.copy(model, 0, 0, Math.min(size, initial.length));
    // Bytes whose content is unspecified (trim on devices where trim need not zero).
    const unknown = new Uint8Array(size);

    const check = async (offset: number, length: number, what: string): Promise<void> => {
      const got = Buffer.alloc(length);
      await dev!.read(offset, got);
      if (got.equals(model.subarray(offset, offset + length))) return;
      for (let i = 0; i < length; i++) {
        if (unknown[offset + i]) continue;
        if (got[i] !== model[offset + i]) {
          throw new Error(
            `${what}: byte at ${offset + i} is ${got[i]} but the model says ${model[offset + i]} (read offset=${offset} length=${length})`,
          );
        }
      }
    };

    for (const op of ops) {
      switch (op.kind) {
        case 'read':
          await check(op.offset, op.length, 'read');
          break;
        case 'write': {
          const data = payload(op.offset, op.length, op.fill);
          await dev.write(op.offset, data, { fua: op.fua });
          data.copy(model, op.offset);
          unknown.fill(0, op.offset, op.offset + op.length);
          break;
        }
        case 'zero':
          await dev.writeZeroes(op.offset, op.length, { fua: op.fua });
          model.fill(0, op.offset, op.offset + op.length);
          unknown.fill(0, op.offset, op.offset + op.length);
          break;
        case 'trim':
          if (!dev.capabilities.trim) break;
          await dev.trim(op.offset, op.length);
          if (trimReadsZero) {
            model.fill(0, op.offset, op.offset + op.length);
            unknown.fill(0, op.offset, op.offset + op.length);
          } else {
            unknown.fill(1, op.offset, op.offset + op.length);
          }
          break;
        case 'flush':
          await dev.flush();
          break;
        case 'reopen':
          await dev.flush();
          await dev.close();
          dev = undefined;
          dev = await fx.reopen();
          expect(dev.size).toBe(size);
          break;
        case 'parallel': {
          // Two concurrent writes. If they overlap, the result per byte is one of the two
          // (NBD gives no ordering between in-flight requests), so mark overlaps unknown
          // but require that non-overlapping parts are exact: a lost RMW shows up there.
          const da = payload(op.a.offset, op.a.length, op.a.fill);
          const db = payload(op.b.offset, op.b.length, op.b.fill);
          await Promise.all([dev.write(op.a.offset, da), dev.write(op.b.offset, db)]);
          da.copy(model, op.a.offset);
          db.copy(model, op.b.offset);
          unknown.fill(0, op.a.offset, op.a.offset + op.a.length);
          unknown.fill(0, op.b.offset, op.b.offset + op.b.length);
          const lo = Math.max(op.a.offset, op.b.offset);
          const hi = Math.min(op.a.offset + op.a.length, op.b.offset + op.b.length);
          if (lo < hi) {
            // Resolve the overlap from the device, but each byte must be a or b.
            const got = Buffer.alloc(hi - lo);
            await dev.read(lo, got);
            for (let i = 0; i < got.length; i++) {
              const x = got[i]!;
              if (x !== da[lo - op.a.offset + i] && x !== db[lo - op.b.offset + i]) {
                throw new Error(`parallel writes: byte at ${lo + i} is ${x}, neither write's value`);
              }
            }
            got.copy(model, lo);
          }
          break;
        }
      }
    }

    // Final: flush, reopen, full compare, ZERO extents really zero.
    await dev.flush();
    await dev.close();
    dev = undefined;
    dev = await fx.reopen();
    await check(0, size, 'final full read after reopen');
    if (dev.capabilities.blockStatus) {
      let pos = 0;
      while (pos < size) {
        const extents = await dev.blockStatus(pos, size - pos);
        expect(extents.length).toBeGreaterThan(0);
        for (const e of extents) {
          expect(e.length).toBeGreaterThan(0);
          if (e.flags & EXTENT_ZERO && !isZero(model, pos, e.length)) {
            for (let i = pos; i < pos + e.length; i++) {
              if (!unknown[i] && model[i] !== 0) throw new Error(`blockStatus says ZERO at ${i} but the byte is ${model[i]}`);
            }
          }
          pos += e.length;
        }
      }
      expect(pos).toBe(size);
    }
    if (fx.backingPath) expect(SHA(readFileSync(fx.backingPath))).toBe(backingBefore);
  } finally {
    if (dev) await dev.close().catch(() => {});
    await fx.cleanup();
  }
}

function isZero(b: Buffer, offset: number, length: number): boolean {
  for (let i = offset; i < offset + length; i++) if (b[i] !== 0) return false;
  return true;
}
