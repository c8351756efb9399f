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
 * is written only by the server into the header, which lies outside the guest's disk.
 */
import { link, open, readdir, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { createCow } from './index.js';
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
 * Freeze `top` as the next snapshot layer and put a new empty cow over it at `top`.
 * The caller has flushed every write to `top` and writes nothing to it afterwards (its
 * mtime, recorded in the new header, must not change). Returns the frozen layer's path.
 */
export async function stackCowLayer(top: string, virtualSize: number): Promise<string> {
  const frozen = await nextSnapshotLayer(top);
  const tmp = `${top}.tmp-${process.pid}`;
  // A second name for the old top first (link keeps its mtime), then the new top replaces
  // the old name in one rename: a crash at any point leaves `top` a complete overlay.
  await link(top, frozen);
  try {
    await createCow(tmp, { backingFile: frozen, backingSize: virtualSize, force: true });
    await rename(tmp, top);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    await unlink(frozen).catch(() => {}); // undo: the old top stays the top
    throw err;
  }
  await syncDir(path.dirname(path.resolve(top)));
  return frozen;
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
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
