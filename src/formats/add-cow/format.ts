/**
 * The add-cow format record (QEMU's proposed format, final V19/V20 spec;
 * docs/add-cow-format.md): what the registry lists.
 */
import { linearOffsets, type FormatRecord } from '../format-record.js';
import { checkAddCow } from './add-cow-check.js';
import { createAddCowImage } from './add-cow-create.js';
import { ADD_COW_MAGIC } from './add-cow-header.js';
import { inspectAddCowLayer } from './add-cow-inspect.js';
import { addCowLayer, rebaseAddCow } from './add-cow-layer.js';
import { openAddCow } from './add-cow-open.js';

export const addCowFormat: FormatRecord = {
  name: 'add-cow',
  summary: 'add-cow overlay: .add-cow metadata + raw image file at the same offsets',
  overlay: true,
  fileSuffix: '.add-cow',
  probe: (head) => head.length >= 8 && head.subarray(0, 4).equals(ADD_COW_MAGIC),
  open: openAddCow,
  create: createAddCowImage,
  inspect: inspectAddCowLayer,
  check: checkAddCow,
  layer: addCowLayer,
  rebase: rebaseAddCow,
  // The image file is raw: guest offset n is byte n of it.
  hostOffsets: async () => linearOffsets(0),
};
