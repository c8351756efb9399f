/**
 * The add-cow record's answers for commit and rebase: allocated clusters (the whole disk
 * when ALL_ALLOCATED), and the header rewrite of rebase — the name area re-encoded
 * (backing name, then image name, at 76), a relative new backing stored relative to the
 * .add-cow file's directory, HEADER_SIZE unchanged (docs/add-cow-format.md).
 */
import path from 'node:path';
import type { BlockDevice } from '../../block/block-device.js';
import { CheckedDevice } from '../../block/checked-device.js';
import type { OutputSize, OverlayLayer, RebaseOutcome, RebaseRequest } from '../format-record.js';
import { rewriteHeader } from '../header-rewrite.js';
import { inspectAddCow } from './add-cow-create.js';
import { AddCowDevice } from './add-cow-device.js';
import { encodeAddCowHeader } from './add-cow-header.js';
import { checkDistinctFiles } from './add-cow-open.js';

export function addCowLayer(device: BlockDevice): OverlayLayer | undefined {
  const driver = device instanceof CheckedDevice ? device.driver : device;
  if (!(driver instanceof AddCowDevice)) return undefined;
  const size = device.size;
  const bm = driver.bitmap;
  const cluster = driver.header.clusterSize;
  return {
    format: 'add-cow',
    unit: cluster,
    backingPath: driver.allAllocated ? undefined : driver.backingPath,
    backingFormat: driver.backingFormat ?? (driver.header.backingFormat || undefined),
    *runs() {
      if (driver.allAllocated) {
        if (size > 0) yield [0, size];
        return;
      }
      for (let c = 0; c < bm.bitCount; ) {
        const n = bm.runLength(c, bm.bitCount - c);
        if (n <= 0) break;
        if (bm.get(c)) yield [c * cluster, Math.min(size, (c + n) * cluster)];
        c += n;
      }
    },
    allocatedBytes: () => driver.allocatedBytes,
    outputLength: (mode: OutputSize | undefined, virtualSize: number) => {
      if (mode === 'uml-moo') throw new Error('--output-size uml-moo applies to cow overlays only');
      return virtualSize;
    },
    commitLimit: (limit: number) => limit,
    checkCommitFits(targetSize: number, file: string, target: string) {
      // An add-cow image may be larger than its backing (docs/add-cow-format.md#a2): never drop allocated data silently.
      let past = 0;
      for (const [s, e] of this.runs()) past += Math.max(0, e - Math.max(s, targetSize));
      if (past > 0) {
        throw new Error(`${file}: ${past} bytes of allocated clusters lie past the end of the backing file ${target} (${targetSize} bytes); commit -o OUT instead`);
      }
    },
    journalFacts: (targetSize: number) => ({ expectedSize: targetSize, headerMtime: null }),
    afterCommit: () => Promise.resolve(false),
  };
}

export async function rebaseAddCow(file: string, req: RebaseRequest): Promise<RebaseOutcome> {
  const insp = await inspectAddCow(file);
  const h = insp.header;
  await checkDistinctFiles(file, insp.imagePath, req.newPath);
  const dir = path.dirname(path.resolve(file));
  const stored = path.isAbsolute(req.newBacking) ? req.newBacking : path.relative(dir, req.newPath);
  const newFormat = req.newBackingFormat ?? 'raw';
  let bytes: Buffer;
  try {
    bytes = encodeAddCowHeader({
      clusterBits: h.clusterBits,
      imageName: h.imageName,
      imageFormat: h.imageFormat,
      backingName: stored,
      backingFormat: newFormat,
      compatFeatures: h.compatFeatures,
    });
  } catch (err) {
    throw new Error(`${file}: cannot store new backing name: ${(err as Error).message}`);
  }
  const copied = !req.unsafe && !h.allAllocated ? await req.copyDivergent(newFormat) : 0;
  await rewriteHeader(file, bytes, h.headerSize);
  return { oldBacking: insp.backingPath ?? null, storedBacking: stored, bytesCopied: copied };
}
