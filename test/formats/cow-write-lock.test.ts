/** SectorWriteLock: whole-sector writes run together; partial edges exclude overlaps; FIFO; no deadlock. */
import { describe, expect, it } from 'vitest';
import { SectorWriteLock } from '../../src/formats/cow/cow-write-lock.js';

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

describe('SectorWriteLock', () => {
  it('overlapping whole-sector writes hold the lock at the same time (no image-wide lock)', async () => {
    const lock = new SectorWriteLock();
    const g = gate();
    const a = lock.run(0, 2048, [], () => g.wait);
    const b = lock.run(100, 300, [], () => g.wait);
    const c = lock.run(5000, 5001, [5000], () => g.wait); // disjoint RMW
    await Promise.resolve();
    expect(lock.held).toBe(3);
    g.open();
    await Promise.all([a, b, c]);
    expect(lock.held).toBe(0);
  });

  it('an RMW edge waits for an overlapping write and vice versa, in FIFO order', async () => {
    const lock = new SectorWriteLock();
    const order: string[] = [];
    const g1 = gate();
    const body = lock.run(0, 16, [], async () => {
      order.push('body-start');
      await g1.wait;
      order.push('body-end');
    });
    const rmw = lock.run(8, 9, [8], async () => {
      order.push('rmw');
    });
    const later = lock.run(4, 12, [], async () => {
      order.push('later'); // conflicts with the waiting RMW's edge: must not overtake it
    });
    await new Promise((r) => setTimeout(r, 5));
    expect(order).toEqual(['body-start']);
    g1.open();
    await Promise.all([body, rmw, later]);
    expect(order).toEqual(['body-start', 'body-end', 'rmw', 'later']);
  });

  it('crossing edge claims never deadlock (all-or-nothing grants)', async () => {
    const lock = new SectorWriteLock();
    const runs: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      const first = (i * 7) % 50;
      const end = first + 1 + ((i * 13) % 9);
      const edges = i % 2 ? [first, end - 1] : [end - 1];
      runs.push(lock.run(first, end, edges, () => new Promise((r) => setTimeout(r, i % 3))));
    }
    await Promise.all(runs);
    expect(lock.held).toBe(0);
  });
});
