/**
 * The add-cow format (QEMU's proposed format, final V19/V20 spec): public surface. The
 * record (format.ts) is what the rest of cownbd uses; the functions are for tests and
 * add-cow-specific commands (finalize). docs/add-cow-format.md has the layout.
 *
 *   format.ts          the FormatRecord
 *   add-cow-header.ts  header layout: parse / validate / serialize by explicit offsets
 *   add-cow-open.ts    name resolution, identity checks, bitmap load, openAddCow
 *   add-cow-device.ts  the BlockDevice (read/write/COW-fill/flush ordering/block status)
 *   add-cow-create.ts  create, finalize (set ALL_ALLOCATED), inspect
 *   add-cow-inspect.ts info; add-cow-check.ts: check; add-cow-layer.ts: commit/rebase facts
 */
export { addCowFormat } from './format.js';
export { openAddCow, openAddCowFiles, resolveAddCowName, ADD_COW_SECTOR } from './add-cow-open.js';
export { finalizeAddCow, inspectAddCow } from './add-cow-create.js';
export type { CreateAddCowOptions, AddCowInspection } from './add-cow-create.js';
export { AddCowDevice } from './add-cow-device.js';
export {
  ADD_COW_COMPAT_ALL_ALLOCATED,
  AddCowHeaderError,
  AddCowOffset,
  addCowHeaderSize,
  addCowMetadataLength,
  encodeAddCowHeader,
  parseAddCowHeader,
} from './add-cow-header.js';
export type { AddCowHeader, AddCowHeaderFields } from './add-cow-header.js';
