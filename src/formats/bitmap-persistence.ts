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
