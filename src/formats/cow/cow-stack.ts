/**
 * openCow, the cow record's open(): the cow file (cow-open.ts: layout, geometry, on-demand
 * bitmap) over its backing device. The backing is validated against the OPENED backing
 * device's size (then mtime) and opened with req.openBacking: raw unless the operator
 * names another format — a cow header records none, and backings are never probed.
 *
 * Snapshot layers (cow-layers.ts): a backing named *.snap-N.cow is a cow layer made by a
 * snapshot; it is opened as cow, and the configured backing format applies to the first
 * layer below that is not one.
 *
 * The backing device is opened ONCE per layer: the size check and the device the overlay
 * reads through are the same open (BackingOnce). Opening it once to measure and again to
 * use doubled the work at every layer: 3·2^depth file opens for a chain of snapshots.
 */
import type { BlockDevice } from '../../block/block-device.js';
import type { OpenBacking, OpenRequest } from '../format-record.js';
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
  const below = new BackingOnce(req.openBacking, backingFormat);
  let state;
  let backing: BlockDevice;
  try {
    state = await readCowFile(path, {
      native: req.io.native,
      guard: req.io.guard,
      referenced: req.referenced,
      readOnly: req.readOnly,
      layout: req.layout,
      backingFile: req.backingFile,
      ignoreMtime: req.ignoreMtime,
      pathMap: req.pathMap,
      // A backing that is not a local file (s3://) is identified by its device's size and mtime.
      remoteBackingStat: async (spec) => {
        const dev = await below.get(spec);
        const mtime = dev.describe().detail?.mtime;
        if (typeof mtime !== 'number') throw new Error(`backing "${spec}" reports no mtime`);
        return { size: dev.size, mtime };
      },
      backingSizeOf: async (file) => (await below.get(file)).size,
    });
  } catch (err) {
    await below.closeAll();
    throw err;
  }
  try {
    backing = await below.take(state.backingResolved);
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

/**
 * The backing devices opened while a cow header is validated, by spec: each opened at
 * most once; take() hands the chosen one over (opening it if validation did not) and
 * closes the rest (a version-2 header may try candidate layouts naming other paths).
 */
class BackingOnce {
  private readonly opened = new Map<string, Promise<BlockDevice>>();

  constructor(
    private readonly openBacking: OpenBacking,
    private readonly format: string,
  ) {}

  get(spec: string): Promise<BlockDevice> {
    let dev = this.opened.get(spec);
    if (!dev) {
      dev = this.openBacking(spec, this.format);
      this.opened.set(spec, dev);
      dev.catch(() => this.opened.delete(spec));
    }
    return dev;
  }

  async take(spec: string): Promise<BlockDevice> {
    let dev: BlockDevice;
    try {
      dev = await this.get(spec);
    } finally {
      this.opened.delete(spec);
      await this.closeAll();
    }
    return dev;
  }

  async closeAll(): Promise<void> {
    const rest = [...this.opened.values()];
    this.opened.clear();
    for (const p of rest) await p.then((d) => d.close()).catch(() => {});
  }
}
