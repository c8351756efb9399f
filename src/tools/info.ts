/**
 * `cownbd info FILE [--json] [--backing-chain]`: what an image is, like `qemu-img info`.
 * Never opens a device for writing, never fails because the backing file is missing or
 * changed: that is reported (backing.sizeCheck / mtimeCheck / message).
 *
 * JSON: one InfoJson object, or with --backing-chain an array (top layer first), the
 * shape documented by INFO_SCHEMA in json-schemas.ts.
 */
import { formatByName } from '../formats/registry.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import { inspectLayer, type BackingReport, type InspectedLayer, type InspectOptions } from './inspect.js';
import { formatSize } from '../util/size.js';

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

/** One layer of `info`: the JSON document and the format's own text lines. */
export interface InfoReport {
  readonly json: InfoJson;
  readonly overlay: boolean;
  readonly sectionText: ReadonlyArray<readonly [string, string | number]>;
}

export function toInfoReport(l: InspectedLayer): InfoReport {
  const json: InfoJson = {
    filename: l.path,
    format: l.format,
    virtualSize: l.virtualSize,
    apparentSize: l.file.apparentSize,
    actualSize: l.file.actualSize,
    allocatedBytes: l.allocatedBytes,
    backing: l.backing,
    commitInProgress: l.commitJournal ? { target: l.commitJournal.target, started: l.commitJournal.started } : null,
  };
  // The format's own section (cow: header/geometry; add-cow: clusters, image file).
  if (l.section) (json as unknown as Record<string, unknown>)[l.section.key] = l.section.json;
  return { json, overlay: formatByName(l.format).overlay, sectionText: l.section?.text ?? [] };
}

/** The layer and, with `chain`, every backing layer below it (top first). */
export async function runInfo(file: string, options: InspectOptions & { chain?: boolean }): Promise<InfoReport[]> {
  let layer = await inspectLayer(file, options);
  const out = [toInfoReport(layer)];
  const seen = new Set([layer.path]);
  while (options.chain) {
    const next = layer.next;
    // An s3:// base is the end of the local chain (`cownbd info s3://…` describes it).
    if (!next || isObjectStoreUri(next.path)) break;
    if (seen.has(next.path)) throw new Error(`${next.path}: backing chain loops back to this file`);
    seen.add(next.path);
    layer = await inspectLayer(next.path, { format: next.format, io: options.io, objectStore: options.objectStore });
    out.push(toInfoReport(layer));
  }
  return out;
}

export function formatInfoText(report: InfoReport): string {
  const info = report.json;
  const lines: string[] = [];
  const kv = (k: string, v: string | number): void => void lines.push(`${k}: ${v}`);
  kv('image', info.filename);
  kv('file format', info.format);
  kv('virtual size', `${formatSize(info.virtualSize)} (${info.virtualSize} bytes)`);
  kv('disk size', `${formatSize(info.actualSize)} (apparent ${info.apparentSize} bytes)`);
  if (report.overlay) kv('allocated in this layer', `${formatSize(info.allocatedBytes)} (${info.allocatedBytes} bytes)`);
  for (const [k, v] of report.sectionText) kv(k, v);
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
