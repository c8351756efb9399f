/**
 * The qcow2 format (read-only reader, written from QEMU's specification;
 * docs/qcow2-format.md): public surface.
 *
 *   format.ts             the FormatRecord: open, inspect (no probe: selected by name)
 *   qcow2-header.ts       header + extensions, every field validated (pure)
 *   qcow2-map.ts          L1 → L2 → cluster lookup, standard and extended L2 entries
 *   qcow2-lru.ts          the byte-bounded caches (L2 slices, decompressed clusters)
 *   qcow2-decompress.ts   deflate and zstd clusters
 *   qcow2-device.ts       the read-only BlockDevice (reads, block status)
 *   qcow2-open.ts         opening: header, L1 table, backing
 *   qcow2-inspect.ts      info
 */
export { qcow2Format } from './format.js';
export { Qcow2Device } from './qcow2-device.js';
export { isQcow2Magic, parseQcow2Header, Qcow2HeaderError, QCOW2_MAGIC, type Qcow2Header } from './qcow2-header.js';
export { openQcow2, readQcow2File } from './qcow2-open.js';
