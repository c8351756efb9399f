/**
 * AllocationBitmap's on-demand pages against a real (sparse) file: memory follows what was
 * written, not the bitmap's size. Asserted structurally — pages resident and pages read —
 * never by timing or RSS. Bits must survive eviction, and a page being persisted must not
 * be evicted (re-reading the file's old bytes would lose bits).
 */
import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AllocationBitmap, fileBitmapSource } from '../../src/formats/allocation-bitmap.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';

const PAGE = 4096;
const PAGE_BITS = PAGE * 8;
// The bitmap of a 1 TiB cow overlay: 2^31 sectors, 256 MiB of bitmap, 65536 pages.
const BITS = 2 ** 31;
const BYTES = BITS / 8;

let tmp: TempDir;
let fd: number;
beforeEach(() => {
  tmp = makeTempDir('bitmap-');
  fd = openSync(tmp.file('bitmap'), 'w+');
  ftruncateSync(fd, BYTES); // sparse: a fresh overlay's bitmap region
});
afterEach(() => {
  closeSync(fd);
  tmp.cleanup();
});

/** Write the taken pages to the file, as a format driver's flush does. */
function persist(bm: AllocationBitmap): number[] {
  const pages = bm.takeDirtyPages();
  for (const p of pages) {
    const { offset, data } = bm.pageBytes(p);
    writeSync(fd, data, 0, data.length, offset);
  }
  bm.pagesPersisted(pages);
  return pages;
}

describe('AllocationBitmap pages on demand', () => {
  it('a fresh 256 MiB bitmap known to be a hole loads nothing, whatever is asked', () => {
    const bm = new AllocationBitmap(BITS, BYTES, PAGE, fileBitmapSource(fd, 0, BYTES, []));
    expect(bm.runLength(0, BITS)).toBe(BITS);
    expect(bm.get(BITS - 1)).toBe(false);
    expect(bm.countSet()).toBe(0);
    expect(bm.pageLoads).toBe(0);
    expect(bm.residentPages).toBe(0);
  });

  it('scattered writes keep only their pages; after persisting, clean pages are evicted to the budget and re-read correctly', () => {
    const budgetPages = 8;
    const bm = new AllocationBitmap(BITS, BYTES, PAGE, fileBitmapSource(fd, 0, BYTES, []), { cleanBudget: budgetPages * PAGE });
    const bits = Array.from({ length: 100 }, (_, i) => i * 600 * PAGE_BITS + 8 * i + 3); // 100 distinct pages
    for (const b of bits) expect(bm.setRange(b, 8)).toBe(true);
    expect(bm.residentPages).toBe(100); // dirty pages are never evicted
    expect(persist(bm)).toHaveLength(100);
    expect(bm.residentPages).toBeLessThanOrEqual(budgetPages);
    // Every bit is still there (pages re-read from the file), and runs see them.
    for (const b of bits) {
      expect(bm.get(b)).toBe(true);
      expect(bm.get(b - 1)).toBe(false);
      expect(bm.runLength(b, 64)).toBe(8);
    }
    expect(bm.pageLoads).toBeGreaterThan(0);
    expect(bm.residentPages).toBeLessThanOrEqual(budgetPages + 1);
    expect(bm.countSet()).toBe(800);
    expect(bm.residentPages).toBeLessThanOrEqual(budgetPages + 1); // countSet streams
  });

  it('a page taken for persisting stays resident until pagesPersisted, even over budget', () => {
    const bm = new AllocationBitmap(BITS, BYTES, PAGE, fileBitmapSource(fd, 0, BYTES, []), { cleanBudget: 2 * PAGE });
    bm.setRange(5, 1);
    const taken = bm.takeDirtyPages(); // not yet written to the file
    expect(taken).toEqual([0]);
    // Churn many other clean pages through the budget: write them to the file and re-read.
    for (let i = 1; i <= 20; i++) bm.setRange(i * PAGE_BITS, 1);
    persist(bm);
    for (let i = 1; i <= 20; i++) expect(bm.get(i * PAGE_BITS)).toBe(true);
    expect(bm.get(5)).toBe(true); // evicted and re-read from the stale file, this would be false
    bm.markPagesDirty(taken); // the write "failed": the page is dirty again, bits kept
    expect(bm.get(5)).toBe(true);
    expect(persist(bm)).toEqual([0]);
    expect(bm.get(5)).toBe(true);
  });

  it('without dataRanges pages are read once; zero pages are not kept and not read again', () => {
    const bm = new AllocationBitmap(BITS, BYTES, PAGE, fileBitmapSource(fd, 0, BYTES));
    expect(bm.get(3 * PAGE_BITS)).toBe(false);
    expect(bm.get(3 * PAGE_BITS + 1)).toBe(false);
    expect(bm.pageLoads).toBe(1);
    expect(bm.residentPages).toBe(0);
  });

  it('dataRanges: pages outside them read as zero without I/O, pages inside are loaded', () => {
    const page = Buffer.alloc(PAGE);
    page[0] = 0b101;
    writeSync(fd, page, 0, PAGE, 7 * PAGE);
    const bm = new AllocationBitmap(BITS, BYTES, PAGE, fileBitmapSource(fd, 0, BYTES, [[7 * PAGE, 8 * PAGE]]));
    expect(bm.runLength(0, 7 * PAGE_BITS)).toBe(7 * PAGE_BITS);
    expect(bm.pageLoads).toBe(0);
    expect([bm.get(7 * PAGE_BITS), bm.get(7 * PAGE_BITS + 1), bm.get(7 * PAGE_BITS + 2)]).toEqual([true, false, true]);
    expect(bm.pageLoads).toBe(1);
    expect(bm.runLength(0, BITS)).toBe(7 * PAGE_BITS);
  });

  it('clearFrom drops garbage tail bits on load; bits past byteLength read unset and cannot be set', () => {
    const bytes = Buffer.from([0xff, 0xff]);
    const bm = new AllocationBitmap(20, 2, PAGE, bytes, { clearFrom: 12 });
    expect(bm.countSet()).toBe(12);
    expect(bm.runLength(0, 20)).toBe(12);
    expect(bm.runLength(12, 8)).toBe(8);
    expect(bm.setRange(16, 4)).toBe(false);
    expect(bm.get(17)).toBe(false);
    expect(bm.copyBytes()).toEqual(Buffer.from([0xff, 0x0f]));
  });
});
