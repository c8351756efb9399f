/**
 * Offline inspection of ONE image file without opening a device stack, so it works on
 * images whose backing file is missing or no longer matches: `info` reports that instead
 * of failing. The format's record does the work (FormatRecord.inspect); this adds what
 * the tools know: an unfinished in-place commit recorded next to an overlay.
 */
import { FileIo } from '../block/file-io.js';
import type { ObjectStoreContext } from '../objectstore/open.js';
import type { LayerInspection } from '../formats/inspection.js';
import { backingOpener, recordFor, type ImageFormat } from '../formats/open-image.js';
import { readJournal, type CommitJournal } from './commit-journal.js';

export type { BackingReport, CheckResult, FileSizes, LayerInspection } from '../formats/inspection.js';
export { countBits, fileSizes } from '../formats/inspection.js';

export interface InspectOptions {
  /** Force the format of this file (default: the registry's detection). */
  format?: ImageFormat;
  /** cow: layout override (v1, v2, v3, v3-broken, qemu-i386, qemu-x86_64). */
  layout?: string;
  /** Backing path override (cow: like uml_moo -b; add-cow: instead of the stored name). */
  backingFile?: string;
  /** Backing format override (cow default raw; add-cow default: recorded). */
  backingFormat?: ImageFormat;
  /** I/O policy for the devices opened to measure backing sizes. */
  io?: FileIo;
  /** Object-store access: an s3:// backing's size and mtime come from its device. */
  objectStore?: () => Promise<ObjectStoreContext>;
}

export interface InspectedLayer extends LayerInspection {
  readonly commitJournal: CommitJournal | null;
}

export async function inspectLayer(path: string, options: InspectOptions = {}): Promise<InspectedLayer> {
  const record = await recordFor(path, options.format);
  const layer = await record.inspect(path, {
    layout: options.layout,
    backingFile: options.backingFile,
    backingFormat: options.backingFormat,
    openBacking: backingOpener({ io: options.io ?? new FileIo(), objectStore: options.objectStore }),
  });
  const commitJournal = record.overlay ? ((await readJournal(path)) ?? null) : null;
  return { ...layer, commitJournal };
}
