/**
 * Snapshot layers of a cow overlay: how a live snapshot is laid out on disk, and how a
 * chain of them is recognised when it is opened again.
 *
 *   vm1.cow            the top: the only layer written to; the path the configuration names
 *   vm1.snap-2.cow     the previous top, frozen by the 2nd snapshot (backing of vm1.cow)
 *   vm1.snap-1.cow     frozen by the 1st snapshot (backing of vm1.snap-2.cow)
 *   golden.img         the original backing (its format as configured)
 *
 * A snapshot renames the top to STEM.snap-N.cow (N = highest + 1) and creates a new empty
 * STEM.cow over it, so the configured path always names the top and a restart serves the
 * same chain. Every file is an ordinary UML v3 cow that uml_moo accepts.
 *
 * The cow header records no backing *format*, and backing files are never probed (a
 * guest could write any magic into a raw disk). The format is therefore recorded by the
 * name: a backing file named `*.snap-<N>.cow` is a cow layer made by a snapshot; the
 * configured backing format applies to the first layer below that is not one. The name
 * is written only by the server into the header, which lies outside the guest's disk
 * (docs/cow-format.md#c19).
 */
import { link, open, readdir, rename, unlink, utimes } from 'node:fs/promises';
import path from 'node:path';
import { createCow } from './cow-create.js';
import { readCowFile } from './cow-open.js';
import { decodeCowHeader, detectCowLayout } from './cow-header.js';

const SNAPSHOT_LAYER = /\.snap-(\d+)\.cow$/;

export function isSnapshotLayer(file: string): boolean {
  return SNAPSHOT_LAYER.test(file);
}

function stem(top: string): string {
  const base = path.basename(top);
  return base.endsWith('.cow') ? base.slice(0, -4) : base;
}

/** N when `file` is named like the snapshot layer STEM.snap-N.cow of `top`, else undefined. */
export function snapshotLayerNumber(top: string, file: string): number | undefined {
  const name = path.basename(file);
  const m = SNAPSHOT_LAYER.exec(name);
  return m && name === `${stem(top)}.snap-${m[1]}.cow` ? Number(m[1]) : undefined;
}

/** The snapshot layers of `top` that exist, oldest first. */
export async function snapshotLayerFiles(top: string): Promise<string[]> {
  const dir = path.dirname(path.resolve(top));
  const prefix = `${stem(top)}.snap-`;
  const found: Array<[number, string]> = [];
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    const m = SNAPSHOT_LAYER.exec(f);
    if (m && f.startsWith(prefix) && f.length === prefix.length + m[1]!.length + 4) found.push([Number(m[1]), path.join(dir, f)]);
  }
  return found.sort((a, b) => a[0] - b[0]).map(([, f]) => f);
}

/** Where the next snapshot of `top` freezes it. */
export async function nextSnapshotLayer(top: string): Promise<string> {
  const layers = await snapshotLayerFiles(top);
  const last = layers.length ? Number(SNAPSHOT_LAYER.exec(layers[layers.length - 1]!)![1]) : 0;
  return path.join(path.dirname(path.resolve(top)), `${stem(top)}.snap-${last + 1}.cow`);
}

/** The backing file a cow header names (resolved) and the size it records. */
export async function readCowBacking(file: string): Promise<{ path: string; size: number }> {
  const state = await readCowFile(file, { readOnly: true, validateBacking: false });
  await state.fh.close();
  return { path: state.backingResolved, size: state.header.size };
}

/** The virtual size of the cow `file` (what its device reports, and a top over it records). */
export async function cowVirtualSize(file: string): Promise<number> {
  const state = await readCowFile(file, { readOnly: true, validateBacking: false });
  await state.fh.close();
  return state.geometry.virtualSize;
}

/**
 * The stored backing path of `file` when it is a snapshot layer (so it must be opened as
 * cow). Reads only the header: tops over snapshot layers are always v3 (made by createCow).
 */
export async function snapshotBackingOf(file: string): Promise<string | undefined> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(8192);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    if (!detectCowLayout(head.subarray(0, bytesRead)).includes('v3')) return undefined;
    const stored = decodeCowHeader(head.subarray(0, bytesRead), 'v3').backingFile;
    return isSnapshotLayer(stored) ? stored : undefined;
  } finally {
    await fh.close();
  }
}

/**
 * Replace `file` with an empty cow over `backing`, crash-safely: create beside it, fsync,
 * rename over, fsync the directory. `backing.size` is the virtual size to record.
 */
export async function recreateCowOver(file: string, backing: { path: string; size: number }): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await createCow(tmp, { backingFile: backing.path, backingSize: backing.size, force: true });
  try {
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await syncDir(path.dirname(path.resolve(file)));
}

/**
 * Freeze `top` as the next snapshot layer and put a new empty cow over it at `top`, in
 * three steps so that only a cheap middle step needs writers paused (snapshot.ts):
 *
 *   prepare  (writers still running) link top → STEM.snap-N.cow (a second name, same
 *            inode); create the new top as a temp file over it, recording the frozen
 *            layer's mtime M as of now
 *   commit   (writers paused, all writes done) set the frozen layer's mtime back to M
 *            (later writes moved it) and rename the temp file onto `top`
 *   settle   (writers running again on the new top; the caller has flushed the old
 *            top, whose bitmap pages may have moved the mtime again) restore the mtime
 *            once more, fsync the frozen layer and the directory
 *
 * A crash before commit leaves `top` the old, complete overlay (plus a stray link and
 * temp file, removed by abort or ignored); after settle, the new chain. A crash between
 * the caller's final flush and settle's mtime restore leaves the chain complete but the
 * frozen layer's mtime newer than recorded: it then opens with --ignore-mtime.
 */
export interface PreparedLayer {
  readonly top: string;
  readonly frozen: string;
  readonly tmp: string;
  /** The frozen layer's mtime the new header records (whole seconds). */
  readonly mtime: number;
}

export async function prepareCowLayer(top: string, virtualSize: number): Promise<PreparedLayer> {
  const frozen = await nextSnapshotLayer(top);
  const tmp = `${top}.tmp-${process.pid}`;
  await link(top, frozen);
  try {
    await createCow(tmp, { backingFile: frozen, backingSize: virtualSize, force: true });
    return { top, frozen, tmp, mtime: await recordedMtime(tmp) };
  } catch (err) {
    await unlink(tmp).catch(() => {});
    await unlink(frozen).catch(() => {});
    throw err;
  }
}

export async function commitCowLayer(p: PreparedLayer): Promise<void> {
  const now = Date.now() / 1000;
  await utimes(p.frozen, now, p.mtime);
  await rename(p.tmp, p.top);
}

export async function abortCowLayer(p: PreparedLayer): Promise<void> {
  await unlink(p.tmp).catch(() => {});
  await unlink(p.frozen).catch(() => {});
}

export async function settleCowLayer(p: PreparedLayer): Promise<void> {
  await utimes(p.frozen, Date.now() / 1000, p.mtime);
  await syncFile(p.frozen);
  await syncDir(path.dirname(path.resolve(p.top)));
}

/** All three steps at once, for an overlay nobody has open. Returns the frozen layer. */
export async function stackCowLayer(top: string, virtualSize: number): Promise<string> {
  const p = await prepareCowLayer(top, virtualSize);
  try {
    await commitCowLayer(p);
  } catch (err) {
    await abortCowLayer(p);
    throw err;
  }
  await settleCowLayer(p);
  return p.frozen;
}

/** The backing mtime a v3 cow header (as createCow writes it) records. */
export async function recordedMtime(file: string): Promise<number> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(8192);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    return decodeCowHeader(head.subarray(0, bytesRead), 'v3').mtime;
  } finally {
    await fh.close();
  }
}

/** fsync a file by path (the frozen layer's data and bitmap must be on disk). */
export async function syncFile(file: string): Promise<void> {
  const fh = await open(file, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync a directory so a rename or link in it is durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
