/**
 * The cow format (User-Mode-Linux COW, byte-compatible with UML, uml_mkcow and uml_moo):
 * public surface. The record (format.ts) is what the rest of cownbd uses; the functions
 * below are for tests and for code that needs a cow specifically (the demo, the overlay
 * providers' default). docs/cow-format.md has the on-disk format.
 *
 *   format.ts        the FormatRecord: probe, open, create, inspect, check, layer, rebase
 *   cow-header.ts    every layout by explicit byte offsets (pure)
 *   cow-layout.ts    geometry: bitmap and data offsets, representable sectors
 *   cow-backing.ts   backing path resolution and identity (size, mtime)
 *   cow-open.ts      layout choice, openCow
 *   cow-device.ts    the BlockDevice
 *   cow-create.ts    createCow (like uml_mkcow) and the record's create
 *   cow-inspect.ts   info; cow-check.ts: check; cow-layer.ts: commit/rebase facts
 */
export { cowFormat } from './format.js';
export { createCow, type CreateCowOptions } from './cow-create.js';
export { inspectCowFile } from './cow-inspect.js';
export { cowInspection } from './cow-layer.js';
export { openCow } from './cow-stack.js';
export { CowDevice } from './cow-device.js';
export type { CowBitmapView, CowInspection } from './cow-device.js';
export {
  COW_LAYOUTS,
  COW_MAGIC,
  CowHeaderError,
  decodeCowHeader,
  detectCowLayout,
  encodeCowHeader,
  isCowLayoutName,
  type CowHeader,
  type CowLayoutName,
} from './cow-header.js';
export { cowGeometry, type CowGeometry } from './cow-layout.js';
export { CowBackingError, absolutizeLikeUml, checkBacking, resolveBackingPath, statBacking } from './cow-backing.js';
export { readCowFile, type CowReadOptions, type CowFileState } from './cow-open.js';
