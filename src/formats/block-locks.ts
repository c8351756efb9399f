/**
 * BlockLocks: one async mutex per block index, created on demand and dropped when idle.
 *
 * Overlay formats serialise only the allocation of the SAME block (read-modify-write /
 * copy-on-write fill + bit set), never the whole image (docs/add-cow-format.md#a10). Locks for a set
 * of blocks are always taken in ascending order, so two requests can never deadlock.
 *
 * The mutexes are async-mutex's (the project uses the library, not a hand-written lock).
 * Only allocating writes take them — writes to allocated blocks need no lock — so the
 * await per block is paid once per newly allocated cluster.
 */
import { Mutex } from 'async-mutex';

interface Entry {
  readonly mutex: Mutex;
  users: number;
}

export class BlockLocks {
  private readonly entries = new Map<number, Entry>();

  /** Number of blocks currently locked or waited for (for tests). */
  get activeCount(): number {
    return this.entries.size;
  }

  /** Lock every block in `blocks` (any order, duplicates ok); returns one release function. */
  async acquire(blocks: Iterable<number>): Promise<() => void> {
    const sorted = [...new Set(blocks)].sort((a, b) => a - b);
    const releases: Array<() => void> = [];
    try {
      for (const block of sorted) releases.push(await this.acquireOne(block));
    } catch (err) {
      for (const r of releases.reverse()) r();
      throw err;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const r of releases.reverse()) r();
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

  private async acquireOne(block: number): Promise<() => void> {
    let entry = this.entries.get(block);
    if (!entry) {
      entry = { mutex: new Mutex(), users: 0 };
      this.entries.set(block, entry);
    }
    entry.users++;
    const e = entry;
    let releaseMutex: () => void;
    try {
      releaseMutex = await e.mutex.acquire();
    } catch (err) {
      this.drop(block, e);
      throw err;
    }
    return () => {
      releaseMutex();
      this.drop(block, e);
    };
  }

  private drop(block: number, entry: Entry): void {
    entry.users--;
    if (entry.users === 0 && this.entries.get(block) === entry) this.entries.delete(block);
  }
}
