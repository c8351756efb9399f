/**
 * BitmapPersister: writes the dirty pages of an in-memory AllocationBitmap to its file
 * with data-before-bitmap ordering. Shared by the overlay formats (add-cow; usable by cow).
 *
 *   flush():  snapshot dirty pages ──► syncData() ──► pwrite snapshots ──► syncMetadata()
 *
 * Why a snapshot taken BEFORE syncData: a driver sets a bit only after the pwrite of that
 * cluster's data (and its COW-fill) has completed. Every bit present in the snapshot
 * therefore belongs to data that syncData() makes durable, so no bit can reach the disk
 * ahead of its data (docs/cow-format.md#c15, docs/add-cow-format.md#a10). Bits set by writes that complete while we
 * are syncing mark their page dirty again and go out with the next flush.
 *
 * Flushes are serialised by a mutex so two overlapping flushes never write the same page
 * with different snapshots out of order. On a write error the pages are marked dirty
 * again so a later flush retries them.
 */
import { Mutex } from 'async-mutex';
import type { FileHandle } from 'node:fs/promises';
import type { AllocationBitmap } from './allocation-bitmap.js';
import { writeFully } from '../block/file-io.js';

export interface BitmapPersisterOptions {
  /** The file holding the bitmap. */
  readonly file: FileHandle;
  /** Byte offset of bitmap byte 0 in `file`. */
  readonly offset: number;
  /** Makes every completed guest-data write durable (fdatasync of the data file). */
  readonly syncData: () => Promise<void>;
  /** Makes the bitmap writes durable (fdatasync of `file`; may be the same as syncData). */
  readonly syncMetadata: () => Promise<void>;
}

export class BitmapPersister {
  private readonly lock = new Mutex();

  constructor(
    private readonly bitmap: AllocationBitmap,
    private readonly options: BitmapPersisterOptions,
  ) {}

  /** Data sync, then dirty bitmap pages, then metadata sync. Always syncs data, even if clean. */
  flush(): Promise<void> {
    return this.lock.runExclusive(async () => {
      const pages = this.bitmap.takeDirtyPages();
      const snapshots = pages.map((page) => {
        const { offset, data } = this.bitmap.pageBytes(page);
        return { offset, data: Buffer.from(data) };
      });
      try {
        await this.options.syncData();
        if (snapshots.length === 0) return;
        for (const s of snapshots) await writeFully(this.options.file, this.options.offset + s.offset, s.data);
        await this.options.syncMetadata();
        this.bitmap.pagesPersisted(pages);
      } catch (err) {
        this.bitmap.markPagesDirty(pages);
        throw err;
      }
    });
  }
}
