/**
 * openCow, the cow record's open(): the cow file (cow-open.ts: layout, geometry, on-demand
 * bitmap) over its backing device. The backing is validated against the OPENED backing
 * device's size (then mtime) and opened with req.openBacking: raw unless the operator
 * names another format — a cow header records none, and backings are never probed.
 *
 * Snapshot layers (cow-layers.ts): a backing named *.snap-N.cow is a cow layer made by a
 * snapshot; it is opened as cow, and the configured backing format applies to the first
 * layer below that is not one.
 */
import type { BlockDevice } from '../../block/block-device.js';
import { remoteStat, withBacking, type OpenBacking, type OpenRequest } from '../format-record.js';
import { CowDevice } from './cow-device.js';
import { snapshotBackingOf } from './cow-layers.js';
import { readCowFile } from './cow-open.js';

export async function openCow(path: string, req: OpenRequest): Promise<BlockDevice> {
  if (!req.backingFile && (await snapshotBackingOf(path).catch(() => undefined))) {
    // The layer below is cow too; the configured backing format goes further down.
    const below: OpenBacking = (p) => req.openBacking(p, 'cow', { backingFormat: req.backingFormat, ignoreMtime: req.ignoreMtime });
    return openCowOver(path, { ...req, backingFormat: 'cow', openBacking: below });
  }
  return openCowOver(path, req);
}

async function openCowOver(path: string, req: OpenRequest): Promise<BlockDevice> {
  const backingFormat = req.backingFormat ?? 'raw';
  const state = await readCowFile(path, {
    native: req.io.native,
    guard: req.io.guard,
    referenced: req.referenced,
    readOnly: req.readOnly,
    layout: req.layout,
    backingFile: req.backingFile,
    ignoreMtime: req.ignoreMtime,
    pathMap: req.pathMap,
    // A backing that is not a local file (s3://) is identified by its device's size and mtime.
    remoteBackingStat: remoteStat(req.openBacking, backingFormat),
    backingSizeOf: (file) => withBacking(req.openBacking, file, backingFormat, (d) => d.size),
  });
  let backing: BlockDevice;
  try {
    backing = await req.openBacking(state.backingResolved, backingFormat);
  } catch (err) {
    await state.fh.close();
    throw err;
  }
  return new CowDevice({
    path,
    fh: state.fh,
    header: state.header,
    geometry: state.geometry,
    bitmapBytes: state.bitmap,
    backing,
    backingStored: state.backingStored,
    backingResolved: state.backingResolved,
    readOnly: req.readOnly,
    io: req.io,
  });
}
