/**
 * The add-cow format (QEMU's proposed format, final V19/V20 spec): public surface.
 *
 *   add-cow-header.ts  header layout: parse / validate / serialize by explicit offsets
 *   add-cow-open.ts    name resolution, identity checks, bitmap load, openAddCow
 *   add-cow-device.ts  the BlockDevice (read/write/COW-fill/flush ordering/block status)
 *   add-cow-create.ts  create, finalize (set ALL_ALLOCATED), inspect
 */
export { openAddCow, openAddCowWith, openAddCowFiles, resolveAddCowName, ADD_COW_SECTOR } from './add-cow-open.js';
export { createAddCow, finalizeAddCow, inspectAddCow } from './add-cow-create.js';
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
