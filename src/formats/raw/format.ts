/**
 * The raw format record: a plain file, byte n of the disk at byte n of the file
 * (RawFileDevice). Never probed — it is what a named image is when no record claims or
 * recognises it, and what a backing is unless a header or the operator says otherwise.
 * No backing, no metadata: nothing to check, commit or rebase.
 */
import { RawFileDevice } from '../../block/raw-file-device.js';
import type { FormatRecord } from '../format-record.js';
import { fileSizes } from '../inspection.js';

export const rawFormat: FormatRecord = {
  name: 'raw',
  summary: 'plain disk image file',
  overlay: false,
  open: (path, req) => RawFileDevice.open(path, { readOnly: req.readOnly, io: req.io, referenced: req.referenced }),
  async inspect(path) {
    const file = await fileSizes(path);
    return { path, format: 'raw', virtualSize: file.apparentSize, file, allocatedBytes: file.actualSize, backing: null };
  },
};
