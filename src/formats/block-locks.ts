/**
 * BlockLocks: exclusive locks on block indexes, held only while a block is being allocated.
 *
 * Overlay formats serialise only the allocation of the SAME block (read-modify-write /
 * copy-on-write fill + bit set), never the whole image (docs/add-cow-format.md#a10). Locks for a set
 * of blocks are always taken in ascending order, so two requests can never deadlock.
 * Only allocating writes take them — writes to allocated blocks need no lock.
 *
 * Why not one async-mutex per block (the first version): a 1 MiB write to a fresh add-cow
 * overlay with 4 KiB clusters then created 256 mutexes and awaited them one by one, a
 * promise and a microtask per cluster. Here taking a free block is one Map insert,
 * synchronous; only a block somebody holds costs a promise. A released block passes
 * straight to its first waiter (FIFO), so no waiter can be overtaken and starve.
 */
export class BlockLocks {
  /** Held blocks → their waiters, in arrival order. */
  private readonly held = new Map<number, Array<() => void>>();

  /** Number of blocks currently locked (for tests). */
  get activeCount(): number {
    return this.held.size;
  }

  /** Lock `blocks` (strictly ascending); resolves with one release function. */
  async acquire(blocks: readonly number[]): Promise<() => void> {
    for (let i = 1; i < blocks.length; i++) {
      if (blocks[i]! <= blocks[i - 1]!) throw new RangeError('BlockLocks.acquire: blocks must be strictly ascending');
    }
    for (const block of blocks) {
      const waiters = this.held.get(block);
      if (waiters === undefined) this.held.set(block, []);
      else await new Promise<void>((resolve) => waiters.push(resolve)); // handed over on release
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const block of blocks) this.releaseOne(block);
    };
  }

  /** Run `fn` holding the locks of `blocks` (strictly ascending). */
  async run<T>(blocks: readonly number[], fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(blocks);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  private releaseOne(block: number): void {
    const waiters = this.held.get(block)!;
    const next = waiters.shift();
    if (next) next();
    else this.held.delete(block);
  }
}
