/**
 * The raw format record: a plain file, byte n of the disk at byte n of the file
 * (RawFileDevice). Never probed — it is what a named image is when no record claims or
 * recognises it, and what a backing is unless a header or the operator says otherwise.
 * No backing, no metadata: nothing to check, commit or rebase. `create` makes a sparse
 * file of the given size (qemu-img create's default), crash-safely like every file we make.
 */
import { RawFileDevice } from '../../block/raw-file-device.js';
import { linearOffsets, type FormatRecord } from '../format-record.js';
import { fileSizes } from '../inspection.js';
import { createFileAtomically } from '../../util/atomic-file.js';

export const rawFormat: FormatRecord = {
  name: 'raw',
  summary: 'plain disk image file',
  overlay: false,
  open: (path, req) => RawFileDevice.open(path, { readOnly: req.readOnly, io: req.io, referenced: req.referenced }),
  async create(path, req) {
    if (req.backing !== undefined || req.image !== undefined) throw new Error('a raw image has no backing or image file: give -f cow or -f add-cow');
    const size = req.size;
    if (size === undefined) throw new Error('a raw image needs a size: cownbd create FILE 64M');
    await createFileAtomically(path, (fh) => fh.truncate(size), { overwrite: Boolean(req.force) }).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'EEXIST' ? new Error(`${path} already exists (use --force to overwrite)`) : err;
    });
    return { files: [path], notes: [] };
  },
  async inspect(path) {
    const file = await fileSizes(path);
    return { path, format: 'raw', virtualSize: file.apparentSize, file, allocatedBytes: file.actualSize, backing: null };
  },
  hostOffsets: async () => linearOffsets(0),
};
