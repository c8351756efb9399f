/**
 * BlockLocks: one exclusive lock per block index, created on demand and dropped when idle.
 *
 * Overlay formats serialise only the allocation of the SAME block (read-modify-write /
 * copy-on-write fill + bit set), never the whole image (style.md §6.11). Locks for a set
 * of blocks are always taken in ascending order, so two requests can never deadlock.
 *
 * A held block is a map entry with its FIFO of waiters; releasing hands the lock straight
 * to the first waiter (or drops the entry). A free block is taken synchronously, with no
 * promise or mutex object per block: allocating writes usually find their blocks free
 * (a 1 MiB add-cow write takes 16 locks of 64 KiB clusters), and this path used to cost
 * an async-mutex plus an await per cluster.
 */

interface Held {
  /** Resolvers of the requests waiting for this block, in arrival order. */
  readonly waiters: Array<() => void>;
}

export class BlockLocks {
  private readonly held = new Map<number, Held>();

  /** Number of blocks currently locked or waited for (for tests). */
  get activeCount(): number {
    return this.held.size;
  }

  /** Lock every block in `blocks` (any order, duplicates ok); returns one release function. */
  async acquire(blocks: Iterable<number>): Promise<() => void> {
    const sorted = [...new Set(blocks)].sort((a, b) => a - b);
    for (const block of sorted) {
      const wait = this.take(block);
      if (wait) await wait;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (let i = sorted.length - 1; i >= 0; i--) this.release(sorted[i]!);
    };
  }

  /** Run `fn` holding the locks of `blocks`. */
  async run<T>(blocks: Iterable<number>, fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(blocks);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Take `block` now (undefined) or get a promise that resolves once it is ours. */
  private take(block: number): Promise<void> | undefined {
    const entry = this.held.get(block);
    if (!entry) {
      this.held.set(block, { waiters: [] });
      return undefined;
    }
    return new Promise<void>((resolve) => entry.waiters.push(resolve));
  }

  private release(block: number): void {
    const entry = this.held.get(block);
    if (!entry) return;
    const next = entry.waiters.shift();
    if (next) next(); // ownership passes to the next waiter; the entry stays
    else this.held.delete(block);
  }
}
