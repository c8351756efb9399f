/**
 * BitmapPersister's periodic sync (issue 26, item 16) against a real file: while bits are
 * unpersisted the timer runs the FLUSH path (data sync, then the bitmap pages), never while
 * the bitmap is clean, and stop() waits for a persist under way, so a closing device never
 * closes its files under a pwrite (a reused descriptor would receive bitmap bytes).
 * The data sync is the real fdatasync behind a gate the test opens, to hold a persist open.
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { FileIo } from '../../src/block/file-io.js';
import { AllocationBitmap } from '../../src/formats/allocation-bitmap.js';
import { BitmapPersister } from '../../src/formats/bitmap-persistence.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';

const BYTES = 4096;
const OFFSET = 512;
let tmp: TempDir;
let fh: FileHandle;
beforeEach(async () => {
  tmp = makeTempDir('periodic-');
  fh = await open(tmp.file('overlay'), 'w+');
  await fh.truncate(OFFSET + BYTES);
});
afterEach(async () => {
  await fh.close();
  tmp.cleanup();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const onDisk = async (byte: number) => (await readFile(tmp.file('overlay')))[OFFSET + byte]!;

/** A persister whose data syncs are counted and pass through `gate` (open by default). */
function persister() {
  const bitmap = new AllocationBitmap(BYTES * 8, BYTES, 1024);
  const state = { dataSyncs: 0, gate: Promise.resolve() as Promise<void>, entered: () => {}, order: [] as string[] };
  const p = new BitmapPersister(bitmap, {
    file: fh,
    offset: OFFSET,
    syncData: async () => {
      state.dataSyncs++;
      state.order.push(`data sync, bitmap byte 1 on disk = ${await onDisk(1)}`);
      state.entered();
      await state.gate;
      await fh.datasync();
    },
    syncMetadata: async () => {
      state.order.push(`bitmap sync, bitmap byte 1 on disk = ${await onDisk(1)}`);
      await fh.datasync();
    },
    io: new FileIo(),
  });
  return { bitmap, p, state };
}

it('persists dirty bits within the interval, data sync first, and stays idle while clean', async () => {
  const { bitmap, p, state } = persister();
  p.startPeriodicSync(20);
  try {
    await sleep(150);
    expect(state.dataSyncs, 'clean bitmap: no sync').toBe(0);
    bitmap.setRange(9, 1); // byte 1, bit 1
    p.noteDataWritten();
    for (let i = 0; i < 100 && (await onDisk(1)) === 0; i++) await sleep(10);
    expect(await onDisk(1)).toBe(0b10);
    expect(state.dataSyncs).toBe(1);
    expect(state.order).toEqual(['data sync, bitmap byte 1 on disk = 0', 'bitmap sync, bitmap byte 1 on disk = 2']);
    expect(bitmap.hasDirty).toBe(false);
    await sleep(150);
    expect(state.dataSyncs, 'nothing dirty since: no further sync').toBe(1);
  } finally {
    await p.stop();
  }
});

it('stop() waits for a periodic persist under way and ends the timer', async () => {
  const { bitmap, p, state } = persister();
  let open!: () => void;
  state.gate = new Promise<void>((resolve) => (open = resolve));
  const entered = new Promise<void>((resolve) => (state.entered = resolve));
  p.startPeriodicSync(10);
  bitmap.setRange(16, 1); // byte 2, bit 0
  await entered; // the timer's persist is inside its data sync
  let stopped = false;
  const stopping = p.stop().then(() => (stopped = true));
  await sleep(100);
  expect(stopped, 'stop() returned while a persist was writing').toBe(false);
  open();
  await stopping;
  // By the time stop() returns, the persist has written its page: the files may close.
  expect(await onDisk(2)).toBe(1);
  bitmap.setRange(24, 1);
  await sleep(100);
  expect(state.dataSyncs, 'no timer after stop()').toBe(1);
  expect(await onDisk(3)).toBe(0);
});
