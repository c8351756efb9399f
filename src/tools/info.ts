/**
 * `cownbd info FILE [--json] [--backing-chain]`: what an image is, like `qemu-img info`.
 * Never opens a device for writing, never fails because the backing file is missing or
 * changed: that is reported (backing.sizeCheck / mtimeCheck / message).
 *
 * JSON: one InfoJson object, or with --backing-chain an array (top layer first), the
 * shape documented by INFO_SCHEMA in json-schemas.ts.
 *
 * A foreign image (qcow2, vmdk, ... : formats/foreign-magic.ts) named without -f is not
 * refused here: info says what it is (its qemu-img name, the size its header states where
 * the probed bytes hold it, else null) and why cownbd will not serve it as raw.
 */
import { ForeignImageError, formatByName, probeImage } from '../formats/registry.js';
import { fileSizes } from '../formats/inspection.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import { inspectLayer, type BackingReport, type InspectedLayer, type InspectOptions } from './inspect.js';
import { formatSize } from '../util/size.js';

export interface InfoJson {
  filename: string;
  /** A format record's name, or a foreign format's qemu-img name (then `foreign` is set). */
  format: string;
  /** null: a foreign image whose header is not read this far (vhdx, dmg, a vmdk descriptor). */
  virtualSize: number | null;
  apparentSize: number;
  actualSize: number;
  /** null for a foreign image (its allocation is not read). */
  allocatedBytes: number | null;
  backing: BackingReport | null;
  /** A format cownbd does not serve: what it is and the refusal serve would print. */
  foreign?: { title: string; message: string };
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
  qcow2?: {
    compat: '0.10' | '1.1';
    clusterSize: number;
    extendedL2: boolean;
    compressionType: 'zlib' | 'zstd';
    refcountBits: number;
    snapshots: number;
    dirty: boolean;
    lazyRefcounts: boolean;
    l1Size: number;
    snapshotList: Array<{ id: string; name: string; vmStateSize: number; dateSec: number; dateNsec: number; vmClockNsec: number; icount: number | null }>;
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

/** The report for a foreign image named without -f, or undefined when it is not one. */
async function foreignReport(file: string, options: InspectOptions): Promise<InfoReport | undefined> {
  if (options.format !== undefined) return undefined;
  const p = await probeImage(file).catch(() => undefined); // unreadable: inspectLayer reports it
  if (!p?.foreign) return undefined;
  const sizes = await fileSizes(file);
  const json: InfoJson = {
    filename: file,
    format: p.foreign.name,
    virtualSize: p.virtualSize ?? null,
    apparentSize: sizes.apparentSize,
    actualSize: sizes.actualSize,
    allocatedBytes: null,
    backing: null,
    foreign: { title: p.foreign.title, message: new ForeignImageError(file, p.foreign).message },
    commitInProgress: null,
  };
  return { json, overlay: false, sectionText: [] };
}

/** The layer and, with `chain`, every backing layer below it (top first). */
export async function runInfo(file: string, options: InspectOptions & { chain?: boolean }): Promise<InfoReport[]> {
  const foreign = await foreignReport(file, options);
  if (foreign) return [foreign];
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
  kv('virtual size', info.virtualSize === null ? 'unknown (not read from this format)' : `${formatSize(info.virtualSize)} (${info.virtualSize} bytes)`);
  kv('disk size', `${formatSize(info.actualSize)} (apparent ${info.apparentSize} bytes)`);
  if (report.overlay && info.allocatedBytes !== null) kv('allocated in this layer', `${formatSize(info.allocatedBytes)} (${info.allocatedBytes} bytes)`);
  if (info.foreign) kv('not served', info.foreign.message);
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
