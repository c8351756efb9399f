/**
 * inspect() of the qcow2 record: header facts and the bytes this layer holds, without
 * opening the backing device as a stack (so `info` works when the backing is missing: that
 * is reported, not fatal). The allocation count walks the L1/L2 tables through the same
 * Qcow2Map the reader uses, window by window (memory does not grow with the disk size).
 */
import { stat } from 'node:fs/promises';
import { readFully } from '../../block/file-io.js';
import { withBacking, type InspectRequest } from '../format-record.js';
import { fileSizes, nextOf, recordedBackingReport, type BackingReport, type InfoSection, type LayerInspection } from '../inspection.js';
import type { Qcow2Header } from './qcow2-header.js';
import { Qcow2Map } from './qcow2-map.js';
import { readQcow2File, resolveQcow2Backing } from './qcow2-open.js';
import { readSnapshots, type Qcow2Snapshot } from './qcow2-snapshots.js';

const WINDOW = 1024 * 1024 * 1024;

export async function inspectQcow2(file: string, req: InspectRequest): Promise<LayerInspection> {
  const { fh, header, fileLength } = await readQcow2File(file);
  let allocatedBytes = 0;
  let snapshots: Qcow2Snapshot[] = [];
  try {
    // The snapshot list is only described (qemu-img info's "snapshots"); a damaged table
    // must not stop info from describing the active layer, which reading never ties to it.
    snapshots = await readSnapshots(fh, fileLength, header.snapshotsOffset, header.nbSnapshots).catch(() => []);
    const l1 = Buffer.alloc(header.l1Size * 8);
    await readFully(fh, header.l1TableOffset, l1, l1.length);
    const map = new Qcow2Map(header, l1, { slice: async (at, len) => { const b = Buffer.alloc(len); await readFully(fh, at, b, len); return b; } }, file);
    for (let pos = 0; pos < header.size; pos += WINDOW) {
      for (const p of await map.mapRange(pos, Math.min(WINDOW, header.size - pos))) if (p.kind !== 'backing') allocatedBytes += p.length;
    }
  } finally {
    await fh.close();
  }
  const resolved = req.backingFile ?? resolveQcow2Backing(file, header.backingName);
  const backing = resolved === undefined ? null : await backingReport(header, resolved, req);
  return {
    path: file,
    format: 'qcow2',
    virtualSize: header.size,
    file: await fileSizes(file),
    allocatedBytes,
    backing,
    section: infoSection(header, snapshots),
    next: nextOf(backing),
  };
}

async function backingReport(h: Qcow2Header, resolved: string, req: InspectRequest): Promise<BackingReport> {
  const format = req.backingFormat ?? (h.backingFormat || null);
  const exists = await stat(resolved).then(() => true, () => false);
  return recordedBackingReport(h.backingName ?? null, resolved, format, exists, 'backing file format is not recorded in the image', (f) =>
    withBacking(req.openBacking, resolved, f, (d) => d.size),
  );
}

function infoSection(h: Qcow2Header, snapshotList: Qcow2Snapshot[]): InfoSection {
  const compat = h.version === 2 ? '0.10' : '1.1';
  const json = {
    compat,
    clusterSize: h.clusterSize,
    extendedL2: h.extendedL2,
    compressionType: h.compression,
    refcountBits: 1 << h.refcountOrder,
    snapshots: h.nbSnapshots,
    dirty: h.dirty,
    // Compatible bit 0 (docs/qcow2-format.md): qemu-img info's "lazy-refcounts".
    lazyRefcounts: (h.compatible & 1n) !== 0n,
    l1Size: h.l1Size,
    snapshotList,
  };
  const text: Array<[string, string | number]> = [
    ['compat', compat],
    ['cluster size', h.clusterSize],
    ['extended l2', String(h.extendedL2)],
    ['compression type', h.compression],
    ['refcount bits', json.refcountBits],
    ['internal snapshots', h.nbSnapshots],
    ['dirty', String(h.dirty)],
  ];
  return { key: 'qcow2', json, text };
}
