/**
 * `cownbd info FILE [--json] [--backing-chain]`: what an image is, like `qemu-img info`.
 * Never opens a device for writing, never fails because the backing file is missing or
 * changed: that is reported (backing.sizeCheck / mtimeCheck / message).
 *
 * JSON: one InfoJson object, or with --backing-chain an array (top layer first), the
 * shape documented by INFO_SCHEMA in json-schemas.ts.
 */
import { inspectLayer, nextLayer, type BackingReport, type InspectOptions, type LayerInspection } from './inspect.js';
import { formatSize } from '../util/size.js';
import { isObjectStoreUri } from '../objectstore/uri.js';

export interface InfoJson {
  filename: string;
  format: string;
  virtualSize: number;
  apparentSize: number;
  actualSize: number;
  allocatedBytes: number;
  backing: BackingReport | null;
  cow?: {
    layout: string;
    version: number;
    headerSize: number;
    mtime: number;
    size: number;
    sectorSize: number;
    alignment: number;
    bitmapOffset: number;
    bitmapLength: number;
    dataOffset: number;
    sectors: number;
    representableSectors: number;
    allocatedSectors: number;
  };
  addCow?: {
    clusterSize: number;
    clusterBits: number;
    headerSize: number;
    features: string;
    compatFeatures: string;
    allAllocated: boolean;
    bitmapOffset: number;
    bitmapLength: number;
    clusterCount: number;
    allocatedClusters: number;
    imageFile: { stored: string; resolved: string; format: string; apparentSize: number; actualSize: number };
  };
  commitInProgress: { target: string; started: string } | null;
}

const LAYOUT_NAMES: Record<string, string> = {
  v1: 'UML v1 (host order, 280-byte header)',
  v2: 'UML v2 (4120-byte header)',
  v3: 'UML v3 (packed, uml_mkcow)',
  'v3-broken': 'UML broken v3 (64-bit unpacked, pre-2005)',
  'qemu-i386': 'QEMU cow (i386 build, 1048-byte header)',
  'qemu-x86_64': 'QEMU cow (x86_64 build, 1056-byte header)',
};

export function toInfoJson(l: LayerInspection): InfoJson {
  const out: InfoJson = {
    filename: l.path,
    format: l.format,
    virtualSize: l.virtualSize,
    apparentSize: l.file.apparentSize,
    actualSize: l.file.actualSize,
    allocatedBytes: l.allocatedBytes,
    backing: l.backing,
    commitInProgress: l.commitJournal ? { target: l.commitJournal.target, started: l.commitJournal.started } : null,
  };
  if (l.cow) {
    const { header: h, geometry: g } = l.cow;
    out.cow = {
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
      allocatedSectors: l.cow.allocatedSectors,
    };
  }
  if (l.addCow) {
    const a = l.addCow;
    out.addCow = {
      clusterSize: a.clusterSize,
      clusterBits: a.header.clusterBits,
      headerSize: a.header.headerSize,
      features: `0x${a.header.features.toString(16)}`,
      compatFeatures: `0x${a.header.compatFeatures.toString(16)}`,
      allAllocated: a.header.allAllocated,
      bitmapOffset: a.header.headerSize,
      bitmapLength: a.bitmap.length,
      clusterCount: a.clusterCount,
      allocatedClusters: a.allocatedClusters,
      imageFile: {
        stored: a.header.imageName,
        resolved: a.imagePath,
        format: a.header.imageFormat,
        apparentSize: a.imageFile.apparentSize,
        actualSize: a.imageFile.actualSize,
      },
    };
  }
  return out;
}

/** The layer and, with `chain`, every backing layer below it (top first). */
export async function runInfo(file: string, options: InspectOptions & { chain?: boolean }): Promise<InfoJson[]> {
  const out: InfoJson[] = [];
  let layer = await inspectLayer(file, options);
  out.push(toInfoJson(layer));
  const seen = new Set([layer.path]);
  while (options.chain) {
    const next = nextLayer(layer);
    // An s3:// base is the end of the local chain (`cownbd info s3://…` describes it).
    if (!next || isObjectStoreUri(next.path)) break;
    if (seen.has(next.path)) throw new Error(`${next.path}: backing chain loops back to this file`);
    seen.add(next.path);
    layer = await inspectLayer(next.path, { format: next.format });
    out.push(toInfoJson(layer));
  }
  return out;
}

export function formatInfoText(info: InfoJson): string {
  const lines: string[] = [];
  const kv = (k: string, v: string | number): void => void lines.push(`${k}: ${v}`);
  kv('image', info.filename);
  kv('file format', info.format);
  kv('virtual size', `${formatSize(info.virtualSize)} (${info.virtualSize} bytes)`);
  kv('disk size', `${formatSize(info.actualSize)} (apparent ${info.apparentSize} bytes)`);
  if (info.format !== 'raw') kv('allocated in this layer', `${formatSize(info.allocatedBytes)} (${info.allocatedBytes} bytes)`);
  if (info.cow) {
    const c = info.cow;
    kv('layout', `${c.layout} - ${LAYOUT_NAMES[c.layout] ?? c.layout}`);
    kv('sector size', c.sectorSize);
    if (c.version === 3) kv('alignment', c.alignment);
    kv('header size', c.headerSize);
    kv('bitmap offset', c.bitmapOffset);
    kv('bitmap length', c.bitmapLength);
    kv('data offset', c.dataOffset);
    kv('header size field', `${c.size} (backing file size)`);
    kv('header mtime', `${c.mtime} (${new Date(c.mtime * 1000).toISOString()})`);
    kv('allocated sectors', `${c.allocatedSectors} of ${c.sectors}`);
    if (c.representableSectors < c.sectors) {
      kv('warning', `only ${c.representableSectors} of ${c.sectors} sectors have a bit in this layout (its bitmap is too short); the rest are read-only`);
    }
  }
  if (info.addCow) {
    const a = info.addCow;
    kv('cluster size', a.clusterSize);
    kv('header size', a.headerSize);
    kv('bitmap offset', a.bitmapOffset);
    kv('bitmap length', a.bitmapLength);
    kv('features', `${a.features} (compatible ${a.compatFeatures}${a.allAllocated ? ', ALL_ALLOCATED' : ''})`);
    kv('allocated clusters', `${a.allocatedClusters} of ${a.clusterCount}`);
    kv('image file', `${a.imageFile.stored} -> ${a.imageFile.resolved} (${a.imageFile.format}, ${formatSize(a.imageFile.actualSize)} on disk)`);
  }
  const b = info.backing;
  if (b) {
    kv('backing file', `${b.stored ?? '(override)'}${b.resolved && b.resolved !== b.stored ? ` (actual path: ${b.resolved})` : ''}`);
    kv('backing file format', b.format ?? '(not recorded)');
    if (!b.exists) kv('backing file check', `MISSING: ${b.message}`);
    else {
      kv('backing file size', `${b.size ?? 'unknown'}${b.sizeCheck === 'ok' ? ' (matches header)' : b.sizeCheck === 'mismatch' ? ` (MISMATCH: header says ${b.expectedSize})` : ''}`);
      if (b.mtimeCheck !== 'not-applicable') {
        kv('backing file mtime', `${b.actualMtime}${b.mtimeCheck === 'ok' ? ' (matches header)' : ` (MISMATCH: header says ${b.expectedMtime})`}`);
      }
      if (b.message) kv('backing file check', b.message);
    }
  }
  if (info.commitInProgress) {
    kv('commit in progress', `into ${info.commitInProgress.target} since ${info.commitInProgress.started} (run \`cownbd commit\` again to finish)`);
  }
  return `${lines.join('\n')}\n`;
}
