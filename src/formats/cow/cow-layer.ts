/**
 * The cow record's answers for commit and rebase: which byte ranges the top layer holds
 * (one bit per 512-byte sector), how long a merged file is (the header's size field keeps
 * a partial last sector's bytes; uml_moo drops them), and the header rewrites both tools
 * need — always in the overlay's own layout, never UML's "switch" to v3, which loses data
 * (docs/cow-format.md#c4).
 */
import { open, stat } from 'node:fs/promises';
import type { BlockDevice } from '../../block/block-device.js';
import { CheckedDevice } from '../../block/checked-device.js';
import { writeFully } from '../../block/file-io.js';
import { remoteStat, type OutputSize, type OverlayLayer, type RebaseOutcome, type RebaseRequest } from '../format-record.js';
import { rewriteHeader } from '../header-rewrite.js';
import { absolutizeLikeUml, resolveBackingPath, statBacking } from './cow-backing.js';
import { CowDevice, type CowInspection } from './cow-device.js';
import { cowMtimeField, encodeCowHeader, type CowHeader } from './cow-header.js';
import { inspectCowFile } from './cow-inspect.js';
import { cowGeometry } from './cow-layout.js';
import { isObjectStoreUri } from '../../objectstore/uri.js';

const SECTOR = 512;

/** The COW inspection of an open device (unwraps CheckedDevice), or undefined if not cow. */
export function cowInspection(device: BlockDevice): CowInspection | undefined {
  const inner = device instanceof CheckedDevice ? device.driver : device;
  return inner instanceof CowDevice ? inner.inspect() : undefined;
}

export function cowLayer(device: BlockDevice): OverlayLayer | undefined {
  const cow = cowInspection(device);
  if (!cow) return undefined;
  const size = device.size;
  const bm = cow.bitmap;
  const h = cow.header;
  return {
    format: 'cow',
    unit: SECTOR,
    backingPath: cow.backingFile.resolved,
    backingFormat: cow.backingFormat,
    *runs() {
      for (let s = 0; s < bm.sectors; ) {
        const n = bm.runLength(s, bm.sectors - s);
        if (n <= 0) break;
        if (bm.isAllocated(s)) yield [s * SECTOR, Math.min(size, (s + n) * SECTOR)];
        s += n;
      }
    },
    allocatedBytes: () => bm.countAllocated() * SECTOR,
    outputLength: (mode: OutputSize | undefined, virtualSize: number) =>
      (mode ?? 'backing') === 'backing' ? h.size : mode === 'uml-moo' ? Math.floor(h.size / SECTOR) * SECTOR : virtualSize,
    commitLimit: (limit: number, mode: OutputSize | undefined) => (mode === 'uml-moo' ? Math.min(limit, Math.floor(h.size / SECTOR) * SECTOR) : limit),
    checkCommitFits: () => {},
    journalFacts: () => ({ expectedSize: h.size, headerMtime: h.mtime }),
    afterCommit: async (file: string, target: string, updateHeader: boolean, notify?: (line: string) => void) =>
      updateHeader && (await sameFile(resolveBackingPath(cow.layout, h.backingFile, file), target)) ? refreshCowMtime(file, h, target, notify) : false,
  };
}

/** Rewrite only the header's 4-byte mtime (one aligned sector write) to the backing's new mtime. */
async function refreshCowMtime(file: string, header: CowHeader, target: string, notify?: (line: string) => void): Promise<boolean> {
  const field = cowMtimeField(header.layout);
  if (!field) return false;
  const st = await statBacking(target);
  if (st.mtime < 0 || st.mtime >= 2 ** 32) {
    notify?.(`cownbd: warning: ${target} mtime ${st.mtime} does not fit the cow header; header not updated`);
    return false;
  }
  if (st.mtime === header.mtime) return false;
  const buf = Buffer.alloc(4);
  if (field.le) buf.writeUInt32LE(st.mtime);
  else buf.writeUInt32BE(st.mtime);
  const fh = await open(file, 'r+');
  try {
    await writeFully(fh, field.offset, buf);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return true;
}

/** Do both paths name the same file (dev + inode)? The header is only refreshed for its own backing. */
async function sameFile(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return sa !== undefined && sb !== undefined && sa.dev === sb.dev && sa.ino === sb.ino;
}

/**
 * Point a cow at a new (raw) backing: path absolutized like uml_mkcow (UML layouts) or
 * stored as given (QEMU layouts, relative to the cow's directory); mtime and size from
 * NEW; NEW must give the same geometry; the path must fit the layout's field.
 */
export async function rebaseCow(file: string, req: RebaseRequest): Promise<RebaseOutcome> {
  if (req.newBackingFormat && req.newBackingFormat !== 'raw') {
    throw new RebaseError(`a cow header cannot record backing format ${req.newBackingFormat}; rebase onto a raw file`);
  }
  const insp = await inspectCowFile(file, {
    layout: req.layout,
    backingFile: req.backingFile,
    ignoreMtime: req.ignoreMtime,
    validateBacking: !req.unsafe,
    remoteBackingStat: remoteStat(req.openBacking, 'raw'),
  });
  const old = insp.header;
  // An s3:// new backing is a pinned version (tools/rebase.ts pinned it): its manifest gives size and mtime.
  const remote = isObjectStoreUri(req.newPath);
  const st = remote ? await remoteStat(req.openBacking, 'raw')(req.newPath) : await statBacking(req.newPath);
  const qemu = old.layout.startsWith('qemu');
  if (!qemu && (st.mtime < 0 || st.mtime >= 2 ** 32) && !req.force) {
    throw new RebaseError(`new backing "${req.newPath}" mtime ${st.mtime} does not fit the header's 32-bit field: UML and uml_moo would refuse the overlay (--force to write it anyway)`);
  }
  const stored = remote ? req.newPath : qemu ? req.newBacking : await absolutizeLikeUml(req.newBacking);
  const next: CowHeader = { ...old, backingFile: stored, size: st.size, mtime: ((st.mtime % 2 ** 32) + 2 ** 32) % 2 ** 32 };
  const g0 = insp.geometry;
  const g1 = cowGeometry(next);
  if (g1.virtualSize !== g0.virtualSize || g1.bitmapLength !== g0.bitmapLength || g1.dataOffset !== g0.dataOffset || g1.bitmapOffset !== g0.bitmapOffset) {
    throw new RebaseError(
      `${file}: new backing "${req.newPath}" is ${st.size} bytes; the ${old.layout} overlay needs a backing of ${old.size} bytes (virtual size ${g0.virtualSize}, data offset ${g0.dataOffset}): its layout would change`,
    );
  }
  let bytes: Buffer;
  try {
    bytes = encodeCowHeader(next);
  } catch (err) {
    throw new RebaseError(`${file}: cannot store new backing path in the ${old.layout} header: ${(err as Error).message}`);
  }
  const copied = req.unsafe ? 0 : await req.copyDivergent('raw');
  await rewriteHeader(file, bytes, old.headerSize);
  return { oldBacking: insp.backingFile.resolved, storedBacking: stored, bytesCopied: copied };
}

/** A refusal the tools report as an operator error (exit 1, the message only). */
export class RebaseError extends Error {
  readonly code = 'COW_ERR_REBASE';
}
