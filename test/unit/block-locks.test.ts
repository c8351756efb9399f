import { describe, expect, it } from 'vitest';
import { BlockLocks } from '../../src/formats/block-locks.js';

const tick = () => new Promise((r) => setImmediate(r));

describe('BlockLocks', () => {
  it('takes free blocks without waiting and frees them on release', async () => {
    const locks = new BlockLocks();
    const release = await locks.acquire([1, 2, 3]);
    expect(locks.activeCount).toBe(3);
    release();
    release(); // idempotent
    expect(locks.activeCount).toBe(0);
  });

  it('a request overlapping a held block waits; disjoint ones do not', async () => {
    const locks = new BlockLocks();
    const releaseA = await locks.acquire([4, 5]);
    const order: string[] = [];
    const b = locks.run([5, 6], async () => void order.push('b'));
    const c = locks.run([7], async () => void order.push('c'));
    await tick();
    expect(order).toEqual(['c']);
    releaseA();
    await b;
    await c;
    expect(order).toEqual(['c', 'b']);
    expect(locks.activeCount).toBe(0);
  });

  it('hands a released block to waiters in arrival order', async () => {
    const locks = new BlockLocks();
    const release = await locks.acquire([9]);
    const order: number[] = [];
    const waiters = [1, 2, 3].map((i) => locks.run([9], async () => {
      order.push(i);
      await tick();
    }));
    release();
    await Promise.all(waiters);
    expect(order).toEqual([1, 2, 3]);
    expect(locks.activeCount).toBe(0);
  });

  it('never lets two holders overlap (random overlapping ranges)', async () => {
    const locks = new BlockLocks();
    const inside = new Set<number>();
    let violations = 0;
    const jobs = Array.from({ length: 200 }, (_, i) => {
      const start = (i * 7) % 13;
      const blocks = Array.from({ length: 1 + (i % 4) }, (_, k) => start + k);
      return locks.run(blocks, async () => {
        for (const b of blocks) if (inside.has(b)) violations++;
        for (const b of blocks) inside.add(b);
        await tick();
        for (const b of blocks) inside.delete(b);
      });
    });
    await Promise.all(jobs);
    expect(violations).toBe(0);
    expect(locks.activeCount).toBe(0);
  });

  it('refuses blocks that are not strictly ascending', async () => {
    await expect(new BlockLocks().acquire([3, 2])).rejects.toThrow(/ascending/);
    await expect(new BlockLocks().acquire([2, 2])).rejects.toThrow(/ascending/);
  });
});
