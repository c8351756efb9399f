/**
 * inspect() of the cow record: header, geometry and bitmap without opening the backing
 * device, so `info` works on a cow whose backing is missing or changed and reports that
 * instead. The driver's own parser (readCowFile) runs first with backing validation; if
 * the backing is missing or mismatched it re-reads without, and the size/mtime checks run
 * here one by one to report each result (UML's order and wording, docs/cow-format.md).
 */
import { nativeFs } from '../../block/native-fs.js';
import { AllocationBitmap } from '../allocation-bitmap.js';
import type { CowInspection } from './cow-device.js';
import { checkBacking, CowBackingError, statBacking } from './cow-backing.js';
import type { CowHeader } from './cow-header.js';
import { snapshotBackingOf } from './cow-layers.js';
import { readCowFile, type CowReadOptions } from './cow-open.js';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { remoteStat, withBacking, type InspectRequest, type OpenBacking } from '../format-record.js';
import { fileSizes, nextOf, type BackingReport, type CheckResult, type InfoSection, type LayerInspection } from '../inspection.js';

/** Streaming the bitmap (counting, never kept): large reads, few syscalls. */
const STREAM_PAGE = 64 * 1024;

/**
 * Header, geometry and allocated-sector count of a COW file, without opening its backing
 * device. The bitmap is streamed page by page (memory does not grow with the disk size).
 */
export async function inspectCowFile(
  path: string,
  options: Pick<CowReadOptions, 'layout' | 'backingFile' | 'ignoreMtime' | 'validateBacking' | 'backingSizeOf' | 'native' | 'remoteBackingStat'> = {},
): Promise<Omit<CowInspection, 'bitmap' | 'backingFormat'> & { allocatedSectors: number; fileLength: number }> {
  const state = await readCowFile(path, { native: nativeFs, ...options, readOnly: true });
  let allocatedSectors: number;
  try {
    const g = state.geometry;
    allocatedSectors = new AllocationBitmap(g.sectors, g.bitmapLength, STREAM_PAGE, state.bitmap).countSet(0, g.representableSectors);
  } finally {
    await state.fh.close();
  }
  return {
    path,
    layout: state.header.layout,
    header: state.header,
    geometry: state.geometry,
    backingFile: { stored: state.backingStored, resolved: state.backingResolved },
    allocatedSectors,
    fileLength: state.fileLength,
  };
}

const LAYOUT_NAMES: Record<string, string> = {
  v1: 'UML v1 (host order, 280-byte header)',
  v2: 'UML v2 (4120-byte header)',
  v3: 'UML v3 (packed, uml_mkcow)',
  'v3-broken': 'UML broken v3 (64-bit unpacked, pre-2005)',
  'qemu-i386': 'QEMU cow (i386 build, 1048-byte header)',
  'qemu-x86_64': 'QEMU cow (x86_64 build, 1056-byte header)',
};

export async function inspectCow(path: string, req: InspectRequest): Promise<LayerInspection> {
  const base = { layout: req.layout, backingFile: req.backingFile };
  // A snapshot layer (NAME.snap-N.cow) is cow by its name (cow-layers.ts).
  const stored = await snapshotBackingOf(path).catch(() => undefined);
  const backingFormat = stored !== undefined ? 'cow' : (req.backingFormat ?? 'raw');
  let insp;
  try {
    insp = await inspectCowFile(path, {
      ...base,
      validateBacking: true,
      remoteBackingStat: remoteStat(req.openBacking, backingFormat),
      backingSizeOf: (f) => withBacking(req.openBacking, f, backingFormat, (d) => d.size),
    });
  } catch (err) {
    if (!(err instanceof CowBackingError)) throw err;
    insp = await inspectCowFile(path, { ...base, validateBacking: false });
  }
  const { header, geometry: g } = insp;
  const { allocatedSectors } = insp;
  const backing = await cowBackingReport(header, insp.backingFile.stored, insp.backingFile.resolved, backingFormat, req.openBacking);
  return {
    path,
    format: 'cow',
    virtualSize: g.virtualSize,
    file: await fileSizes(path),
    allocatedBytes: allocatedSectors * 512,
    backing,
    section: cowInfoSection(header, insp.geometry, allocatedSectors),
    next: nextOf(backing),
  };
}

function cowInfoSection(h: CowHeader, g: CowInspection['geometry'], allocatedSectors: number): InfoSection {
  const json = {
    layout: h.layout,
    version: h.version,
    headerSize: h.headerSize,
    mtime: h.mtime,
    size: h.size,
    sectorSize: h.sectorSize,
    alignment: h.alignment,
    bitmapOffset: g.bitmapOffset,
    bitmapLength: g.bitmapLength,
    dataOffset: g.dataOffset,
    sectors: g.sectors,
    representableSectors: g.representableSectors,
    allocatedSectors,
  };
  const text: Array<[string, string | number]> = [
    ['layout', `${h.layout} - ${LAYOUT_NAMES[h.layout] ?? h.layout}`],
    ['sector size', h.sectorSize],
    ...(h.version === 3 ? [['alignment', h.alignment] as [string, number]] : []),
    ['header size', h.headerSize],
    ['bitmap offset', g.bitmapOffset],
    ['bitmap length', g.bitmapLength],
    ['data offset', g.dataOffset],
    ['header size field', `${h.size} (backing file size)`],
    ['header mtime', `${h.mtime} (${new Date(h.mtime * 1000).toISOString()})`],
    ['allocated sectors', `${allocatedSectors} of ${g.sectors}`],
  ];
  if (g.representableSectors < g.sectors) {
    text.push(['warning', `only ${g.representableSectors} of ${g.sectors} sectors have a bit in this layout (its bitmap is too short); the rest are read-only`]);
  }
  return { key: 'cow', json, text };
}

async function cowBackingReport(header: CowHeader, stored: string, resolved: string, format: string, openBacking: OpenBacking): Promise<BackingReport> {
  const qemu = header.layout.startsWith('qemu');
  const common = { stored, resolved, format, expectedSize: header.size, expectedMtime: header.mtime };
  let st;
  const remote = isObjectStoreUri(resolved);
  try {
    st = remote ? await remoteStat(openBacking, format)(resolved) : await statBacking(resolved);
  } catch (err) {
    return { ...common, exists: false, size: null, sizeCheck: 'missing', actualMtime: null, mtimeCheck: 'missing', message: (err as Error).message };
  }
  // The size of a backing is the opened device's (a chain's virtual size), for every format.
  const size = remote ? st.size : await withBacking(openBacking, resolved, format, (d) => d.size).catch(() => (format === 'raw' ? st.size : null));
  let message: string | null = null;
  let sizeCheck: CheckResult = 'ok';
  let mtimeCheck: CheckResult = qemu ? 'not-applicable' : 'ok';
  try {
    checkBacking(header, st, resolved, { ignoreMtime: true, sizeOverride: size ?? undefined });
  } catch (err) {
    sizeCheck = 'mismatch';
    message = (err as Error).message;
  }
  if (!qemu && header.mtime !== st.mtime) {
    mtimeCheck = 'mismatch';
    message ??= `mtime mismatch (${header.mtime} vs ${st.mtime}) of COW header vs backing file "${resolved}"`;
  }
  return { ...common, exists: true, size, sizeCheck, actualMtime: st.mtime, mtimeCheck, message };
}
