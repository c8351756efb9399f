/**
 * `--output=json` of `info` and `check`: the documents `qemu-img info|check --output=json`
 * print (qemu-img 7.2's keys and shapes, docs/image-tool.md "qemu-img's JSON"), built from
 * the richer reports cownbd computes anyway (`--json` prints those). Pure: no I/O here.
 *
 * qemu-img omits a key rather than printing null or 0 in the places copied here (a
 * backing name only when there is one; check counters only when non-zero), so these
 * builders omit them the same way: a jq recipe that tests `has("backing-filename")` or
 * `.leaks // 0` works unchanged.
 *
 * Where qemu-img has no such format (cow, add-cow) the values chosen are the closest
 * faithful ones, documented in docs/image-tool.md: "format" is the format's name,
 * "cluster-size" the allocation unit (cow: its 512-byte sector), "format-specific" carries
 * the format's own facts with qemu-img's {type, data} wrapping and kebab-case keys.
 */
import path from 'node:path';
import type { CheckJson } from './check.js';
import type { InfoJson } from './info.js';

export type QemuJson = Record<string, unknown>;

/** qemu-img info --output=json for one layer. */
export function qemuInfo(info: InfoJson): QemuJson {
  const out: QemuJson = { filename: info.filename, format: info.format };
  if (info.virtualSize !== null) out['virtual-size'] = info.virtualSize;
  out['actual-size'] = info.actualSize;
  const cluster = clusterSizeOf(info);
  if (cluster !== undefined) out['cluster-size'] = cluster;
  const b = info.backing;
  if (b && (b.stored !== null || b.resolved !== null)) {
    out['backing-filename'] = b.stored ?? b.resolved;
    out['full-backing-filename'] = fullBackingName(info.filename, b.stored, b.resolved);
    if (b.format !== null) out['backing-filename-format'] = b.format;
  }
  const snapshots = info.qcow2?.snapshotList ?? [];
  if (snapshots.length > 0) {
    out.snapshots = snapshots.map((s) => ({
      id: s.id,
      name: s.name,
      'vm-state-size': s.vmStateSize,
      'date-sec': s.dateSec,
      'date-nsec': s.dateNsec,
      'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9),
      'vm-clock-nsec': s.vmClockNsec % 1e9,
      ...(s.icount === null ? {} : { icount: s.icount }),
    }));
  }
  const specific = formatSpecific(info);
  if (specific) out['format-specific'] = specific;
  out['dirty-flag'] = Boolean(info.qcow2?.dirty);
  return out;
}

/**
 * qemu-img's full-backing-filename: a relative name joined to the image's directory as a
 * string (qemu's path_combine: no normalisation, "base.raw" stays relative when the image
 * was named without a directory). Where cownbd resolved the name differently (a UML cow
 * resolves against the working directory; --backing-path-map) the path it opens is shown.
 */
function fullBackingName(image: string, stored: string | null, resolved: string | null): string | null {
  if (stored === null || path.isAbsolute(stored)) return resolved ?? stored;
  const dir = path.dirname(image);
  if (resolved !== null && resolved !== path.resolve(dir, stored)) return resolved;
  return image.includes('/') ? `${image.slice(0, image.lastIndexOf('/') + 1)}${stored}` : stored;
}

/** --backing-chain: each layer is named as the layer above names it (qemu-img does). */
export function qemuInfoChain(infos: readonly InfoJson[]): QemuJson[] {
  const out: QemuJson[] = [];
  for (const info of infos) {
    const above = out[out.length - 1]?.['full-backing-filename'];
    out.push(qemuInfo(typeof above === 'string' ? { ...info, filename: above } : info));
  }
  return out;
}

function clusterSizeOf(info: InfoJson): number | undefined {
  if (info.qcow2) return info.qcow2.clusterSize;
  if (info.addCow) return info.addCow.clusterSize;
  if (info.cow) return info.cow.sectorSize;
  return undefined;
}

function formatSpecific(info: InfoJson): QemuJson | undefined {
  const q = info.qcow2;
  if (q) {
    return {
      type: 'qcow2',
      data: {
        compat: q.compat,
        'compression-type': q.compressionType,
        'lazy-refcounts': q.lazyRefcounts,
        'refcount-bits': q.refcountBits,
        // cownbd refuses images with the corrupt bit set (docs/qcow2-format.md), so any
        // image info describes has it clear.
        corrupt: false,
        'extended-l2': q.extendedL2,
      },
    };
  }
  if (info.cow) return { type: 'cow', data: kebab(info.cow) };
  if (info.addCow) return { type: 'add-cow', data: kebab(info.addCow) };
  return undefined;
}

/** {allocatedSectors: 1, imageFile: {apparentSize: 2}} → {'allocated-sectors': 1, 'image-file': {'apparent-size': 2}} */
export function kebab(value: object): QemuJson {
  const out: QemuJson = {};
  for (const [k, v] of Object.entries(value)) {
    out[k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)] = v !== null && typeof v === 'object' && !Array.isArray(v) ? kebab(v as object) : v;
  }
  return out;
}

/** What check knows about the layer's allocation units, for total/allocated-clusters. */
export interface ClusterCounts {
  readonly total: number;
  readonly allocated: number;
}

/** Allocation units of an overlay's info section (cow: sectors; add-cow: clusters). */
export function clusterCounts(info: InfoJson): ClusterCounts | undefined {
  if (info.addCow) return { total: info.addCow.clusterCount, allocated: info.addCow.allocatedClusters };
  if (info.cow) return { total: info.cow.sectors, allocated: info.cow.allocatedSectors };
  return undefined;
}

/**
 * qemu-img check --output=json. `imageEnd`: the file's length (cownbd's formats keep
 * nothing past their layout; a different length is a file-length finding).
 */
export function qemuCheck(r: CheckJson, imageEnd: number | undefined, clusters: ClusterCounts | undefined): QemuJson {
  const count = (list: CheckJson['findings'], severity: string): number => list.filter((f) => f.severity === severity).length;
  const out: QemuJson = { filename: r.filename, format: r.format, 'check-errors': r.error === null ? 0 : 1 };
  const optional: Array<[string, number | undefined]> = [
    ['corruptions', count(r.findings, 'corruption')],
    ['leaks', count(r.findings, 'leak')],
    ['corruptions-fixed', count(r.repaired, 'corruption')],
    ['leaks-fixed', count(r.repaired, 'leak')],
    ['image-end-offset', imageEnd],
    ['total-clusters', clusters?.total],
    ['allocated-clusters', clusters?.allocated],
  ];
  for (const [k, v] of optional) if (v) out[k] = v;
  return out;
}
