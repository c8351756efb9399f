/**
 * The cow format record (User-Mode-Linux COW, byte-compatible with UML, uml_mkcow and
 * uml_moo; docs/cow-format.md): what the registry lists.
 */
import { overlayCapabilities } from '../overlay-capabilities.js';
import { linearOffsets, type FormatRecord } from '../format-record.js';
import { checkCow } from './cow-check.js';
import { createCowImage } from './cow-create.js';
import { COW_MAGIC, COW_SECTOR_SIZE } from './cow-header.js';
import { inspectCow } from './cow-inspect.js';
import { cowLayer, rebaseCow } from './cow-layer.js';
import { openCow } from './cow-stack.js';

export const cowFormat: FormatRecord = {
  name: 'cow',
  summary: 'User-Mode-Linux COW overlay (uml_mkcow v3; reads v1, v2, v3, QEMU layouts)',
  overlay: true,
  fileSuffix: '.cow',
  liveSnapshots: true,
  // "OOOM" big-endian (v2/v3) or little-endian (v1 on x86).
  probe: (head) => head.length >= 8 && (head.readUInt32BE(0) === COW_MAGIC || head.readUInt32LE(0) === COW_MAGIC),
  open: openCow,
  create: createCowImage,
  inspect: inspectCow,
  check: checkCow,
  layer: cowLayer,
  rebase: rebaseCow,
  // Sector n at data_offset + n * 512 (docs/cow-format.md); describe() carries data_offset.
  hostOffsets: async (layer) => {
    const at = layer.detail?.dataOffset;
    if (typeof at !== 'number') throw new Error(`${layer.path ?? 'cow layer'}: no data offset in its description`);
    return linearOffsets(at);
  },
  overlayGeometry: (backing, io, multiConn) => ({
    size: Math.ceil(backing.size / COW_SECTOR_SIZE) * COW_SECTOR_SIZE,
    capabilities: overlayCapabilities(true, io.native !== undefined, multiConn),
    preferredBlockSize: 4096,
  }),
};
