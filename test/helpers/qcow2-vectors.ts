/**
 * Test helper: qcow2 vectors made at test time by the real qemu-img / qemu-io (never
 * checked-in blobs), the reference reading of them (`qemu-img convert -O raw`,
 * `qemu-img map --output=json`), and the comparison of block status in one shape.
 *
 *   const img = await makeQcow2(dir, 'a', { size: 8 MiB, options: 'cluster_size=512' });
 *   await qemuIoWrites(img, randomOps(seed, size, 20));
 *   expect(await ourBytes(img)).toEqual(await referenceBytes(img, dir));
 */
import { readFileSync } from 'node:fs';
import { type Extent, EXTENT_HOLE, EXTENT_ZERO } from '../../src/block/block-device.js';
import { mustSucceed, qemuImg, runTool, type QemuMapEntry } from './clients.js';
// Deterministic PRNG (the campaign's mulberry32): the same seed makes the same vector.
import { rng as prng } from '../campaign/knobs.js';
export { prng };

export interface MakeOptions {
  readonly size: number;
  /** qemu-img -o options, e.g. "cluster_size=512,compat=0.10". */
  readonly options?: string;
  /** Backing: `-b FILE -F qcow2`. */
  readonly backing?: string;
  readonly backingFormat?: string;
}

export async function makeQcow2(file: string, o: MakeOptions): Promise<string> {
  const args = ['create', '-q', '-f', 'qcow2'];
  if (o.options) args.push('-o', o.options);
  if (o.backing) args.push('-b', o.backing, '-F', o.backingFormat ?? 'qcow2');
  args.push(file, String(o.size));
  mustSucceed(await qemuImg(args));
  return file;
}

/** Run qemu-io commands on a qcow2 (opened as qcow2, read-write). */
export async function qemuIoWrites(file: string, commands: readonly string[]): Promise<void> {
  const args = ['-f', 'qcow2'];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  const r = mustSucceed(await runTool('qemu-io', args));
  if (/error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io: ${r.stdout}${r.stderr}`);
}


/**
 * `n` qemu-io commands at 512-byte granularity: pattern writes (random byte), zero writes
 * (`write -z`, which makes zero clusters / subclusters where aligned) and discards.
 */
export function randomOps(seed: number, size: number, n: number, maxLen = 256 * 1024): string[] {
  const rnd = prng(seed);
  const sectors = size / 512;
  const ops: string[] = [];
  for (let i = 0; i < n; i++) {
    const start = Math.floor(rnd() * sectors);
    const len = Math.max(1, Math.min(sectors - start, Math.floor(rnd() * (maxLen / 512)) + 1));
    const off = start * 512;
    const bytes = len * 512;
    const kind = rnd();
    if (kind < 0.6) ops.push(`write -P ${1 + Math.floor(rnd() * 255)} ${off} ${bytes}`);
    else if (kind < 0.85) ops.push(`write -z ${off} ${bytes}`);
    else ops.push(`discard ${off} ${bytes}`);
  }
  return ops;
}

/** `qemu-img convert -O raw` of the image: the reference bytes. */
export async function referenceBytes(file: string): Promise<Buffer> {
  const out = `${file}.ref.raw`;
  mustSucceed(await qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', file, out]));
  return readFileSync(out);
}

/** `qemu-img map --output=json` of the image (its whole chain). */
export async function referenceMap(file: string): Promise<QemuMapEntry[]> {
  const r = mustSucceed(await qemuImg(['map', '--output=json', '-f', 'qcow2', file]));
  return JSON.parse(r.stdout) as QemuMapEntry[];
}

/** One status run in a shape both sides can produce. */
export interface StatusRun {
  start: number;
  end: number;
  /** "data" | "zero" | "hole": zero = present zeros, hole = no layer holds it. */
  what: string;
  /** Layer holding it: 0 = the image itself, 1 = its backing, ...; -1 = none. */
  layer: number;
}

function merge(runs: StatusRun[]): StatusRun[] {
  const out: StatusRun[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last && last.end === r.start && last.what === r.what && last.layer === r.layer) last.end = r.end;
    else out.push({ ...r });
  }
  return out;
}

/** qemu-img map's entries as runs (present:false = no layer; depth 0 = the image). */
export function runsFromQemuMap(map: readonly QemuMapEntry[]): StatusRun[] {
  return merge(
    map.map((e) => ({
      start: e.start,
      end: e.start + e.length,
      what: e.present === false ? 'hole' : e.data ? 'data' : e.zero ? 'zero' : 'data',
      layer: e.present === false ? -1 : e.depth,
    })),
  );
}

/** Our extents (base:allocation flags + allocation depth) as runs. */
export function runsFromExtents(start: number, extents: readonly Extent[]): StatusRun[] {
  let pos = start;
  const runs: StatusRun[] = [];
  for (const e of extents) {
    const hole = (e.flags & EXTENT_HOLE) !== 0;
    const zero = (e.flags & EXTENT_ZERO) !== 0;
    runs.push({ start: pos, end: pos + e.length, what: e.depth === 0 ? 'hole' : !hole ? 'data' : zero ? 'zero' : 'data', layer: e.depth - 1 });
    pos += e.length;
  }
  return merge(runs);
}
