/**
 * BitmapPersister: writes the dirty pages of an in-memory AllocationBitmap to its file
 * with data-before-bitmap ordering. One for every overlay format (overlay-core.ts).
 *
 *   flush():  snapshot dirty pages ──► syncData() ──► pwrite snapshots ──► syncMetadata()
 *
 * Why a snapshot taken BEFORE syncData: a driver sets a bit only after the pwrite of that
 * block's data (and any COW-fill) has completed. Every bit present in the snapshot
 * therefore belongs to data that syncData() makes durable, so no bit can reach the disk
 * ahead of its data (docs/cow-format.md, docs/add-cow-format.md: crash ordering). Bits set
 * by writes that complete while we are syncing mark their page dirty again and go out
 * with the next flush.
 *
 * Flushes are serialised (async-mutex) so two overlapping flushes never write the same
 * page with different snapshots out of order, and callers arriving while one is queued
 * share it (their writes completed before it takes its snapshot). The data sync is
 * skipped when nothing was written since the last one began and no page is dirty. On a
 * write error the pages are marked dirty again so a later flush retries them.
 *
 * Periodic sync (startPeriodicSync): bits set without a FLUSH would otherwise live only in
 * this process's memory, and a process kill would lose the writes they make visible, with
 * no time limit (their data is in the page cache, which outlives the process, but nothing
 * on disk points at it). While pages are dirty, a timer runs this same flush() every
 * interval, so a kill loses at most the last interval's allocations, and the ordering
 * above (hence power-loss safety) is the FLUSH path's. It shares the mutex and the queue,
 * so it never overtakes or splits a client's FLUSH; the timer is unref'd (it never keeps
 * a tool's process alive) and stop() ends it and waits for a persist under way, before
 * the caller closes the files. Only the bitmap arms it: rewriting allocated blocks sets
 * no bit, and its data already outlives a process kill in the page cache.
 */
import { Mutex } from 'async-mutex';
import type { FileHandle } from 'node:fs/promises';
import type { FileIo } from '../block/file-io.js';
import type { AllocationBitmap } from './allocation-bitmap.js';

export interface BitmapPersisterOptions {
  /** The file holding the bitmap. */
  readonly file: FileHandle;
  /** Byte offset of bitmap byte 0 in `file`. */
  readonly offset: number;
  /** Makes every completed guest-data write durable (fdatasync of the data file). */
  readonly syncData: () => Promise<void>;
  /** Makes the bitmap writes durable (fdatasync of `file`; may be the same as syncData). */
  readonly syncMetadata: () => Promise<void>;
  readonly io: FileIo;
}

export class BitmapPersister {
  private readonly lock = new Mutex();
  private queued: Promise<void> | undefined;
  /** Data written since the last data sync began. */
  private unsynced = false;
  private timer: NodeJS.Timeout | undefined;
  /** A periodic persist is under way (the next tick does not pile another on it). */
  private ticking = false;

  constructor(
    private readonly bitmap: AllocationBitmap,
    private readonly options: BitmapPersisterOptions,
  ) {}

  /** A guest-data write completed: the next flush must sync the data file. */
  noteDataWritten(): void {
    this.unsynced = true;
  }

  /** Data sync (when anything was written), then dirty bitmap pages, then metadata sync. */
  flush(): Promise<void> {
    if (this.queued) return this.queued;
    const p = this.lock.runExclusive(async () => {
      this.queued = undefined;
      await this.persist();
    });
    this.queued = p;
    return p;
  }

  /**
   * Every `ms` milliseconds, persist dirty bitmap pages (flush(), data first) if there are
   * any; 0 or less: never (only FLUSH and close persist them).
   */
  startPeriodicSync(ms: number): void {
    if (ms <= 0 || this.timer) return;
    this.timer = setInterval(() => this.tick(), ms);
    this.timer.unref();
  }

  /** End the periodic sync and wait until no persist runs or is queued. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    // FIFO mutex: this runs after every persist queued before it.
    await this.lock.runExclusive(() => {});
  }

  private tick(): void {
    if (this.ticking || !this.bitmap.hasDirty) return;
    this.ticking = true;
    // A failed persist re-marks its pages dirty: the next tick or the client's next FLUSH
    // retries, and that FLUSH reports the error to the client (the tick has nobody to tell).
    this.flush()
      .catch(() => {})
      .finally(() => {
        this.ticking = false;
      });
  }

  private async persist(): Promise<void> {
    const pages = this.bitmap.takeDirtyPages();
    const snapshots = pages.map((page) => {
      const { offset, data } = this.bitmap.pageBytes(page);
      return { offset, data: Buffer.from(data) };
    });
    try {
      if (this.unsynced || snapshots.length > 0) {
        this.unsynced = false;
        await this.options.syncData();
      }
      if (snapshots.length === 0) return;
      for (const s of snapshots) await this.options.io.write(this.options.file, this.options.offset + s.offset, s.data);
      await this.options.syncMetadata();
      this.bitmap.pagesPersisted(pages);
    } catch (err) {
      this.unsynced = true;
      this.bitmap.markPagesDirty(pages);
      throw err;
    }
  }
}
