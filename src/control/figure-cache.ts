/**
 * Allocation figures for the admin API, computed in the background, never per request.
 *
 * Measuring an export walks its whole block status (and, for a per-machine overlay no
 * client has open, opens its chain): with hundreds of overlays and a status page or a
 * scraper polling, doing it per request took the event loop from the NBD clients. Here:
 *
 *   get(key, compute)   fresh value (younger than ttlMs): answered from memory
 *                       stale value: answered from memory, one refresh queued
 *                       no value yet: waits for the one queued computation
 *   value(key)          the value held now, if any (no computation)
 *   invalidate(prefix)  forget values of an export that was reset, deleted or snapshotted
 *
 * `compute` gets the previous value (undefined the first time), so a refresh may keep it
 * when it can tell cheaply that nothing changed (operations.ts: an overlay file no client
 * has open, same inode, size and mtime).
 *
 * Computations run one at a time, in the order asked (a queue), so a burst of stale
 * entries costs one walk after another, never all at once; concurrent requests for the
 * same key share one run. A failed background refresh keeps the previous value. At most
 * maxEntries keys are kept (least recently refreshed dropped first).
 */

interface Entry<T> {
  value?: T;
  at: number;
  running?: Promise<T>;
}

export class FigureCache<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private queue: Promise<unknown> = Promise.resolve();
  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries = 10_000,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get(key: string, compute: (previous: T | undefined) => Promise<T>): Promise<T> {
    const e = this.entries.get(key);
    if (e?.value !== undefined) {
      if (this.now() - e.at > this.ttlMs && !e.running) this.refresh(key, e, compute).catch(() => {}); // keep the old value
      return Promise.resolve(e.value);
    }
    if (e?.running) return e.running;
    const fresh: Entry<T> = { at: 0 };
    this.entries.set(key, fresh);
    return this.refresh(key, fresh, compute).finally(() => {
      if (fresh.value === undefined && this.entries.get(key) === fresh) this.entries.delete(key);
    });
  }

  /** The value held now, if any; starts no computation. */
  value(key: string): T | undefined {
    return this.entries.get(key)?.value;
  }

  /** Forget every key starting with `prefix` (the next get computes afresh). */
  invalidate(prefix: string): void {
    for (const key of this.entries.keys()) if (key.startsWith(prefix)) this.entries.delete(key);
  }

  private refresh(key: string, e: Entry<T>, compute: (previous: T | undefined) => Promise<T>): Promise<T> {
    const run = this.queue.then(() => compute(e.value));
    this.queue = run.catch(() => {});
    e.running = run;
    return run.then(
      (value) => {
        e.running = undefined;
        // Invalidated meanwhile: the value may describe files that are gone; do not keep it.
        if (this.entries.get(key) !== e) return value;
        e.value = value;
        e.at = this.now();
        // Map order = insertion order: re-insert so the oldest refreshed come first.
        this.entries.delete(key);
        this.entries.set(key, e);
        while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
        return value;
      },
      (err: unknown) => {
        e.running = undefined;
        throw err;
      },
    );
  }
}
