/**
 * Which overlay files pin a published version: an overlay over an object-store base records
 * the pinned address `s3://BUCKET/PREFIX@VERSION` as its backing (docs/object-store.md
 * "Overlays over an s3:// base: pinning"), so deleting that version would leave it without
 * a base once gc reclaims the chunks. `cownbd delete` asks this before deleting.
 *
 *   paths: overlay files or directories (a server's --overlay-dir), searched MAX_DEPTH deep
 *   → pinning:    the files whose header records exactly `pinned` as backing
 *     unreadable: files that could not be inspected (with why): they might pin it, so the
 *                 caller must not treat them as "no pin"
 *
 * Every regular file is inspected (a file of no known format is raw: no backing, no pin).
 * An s3:// backing's size and mtime come from its manifest (objectStore), as for `info`.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ObjectStoreContext } from '../objectstore/open.js';
import { inspectLayer } from './inspect.js';

const MAX_DEPTH = 4;

export interface VersionPins {
  readonly pinning: string[];
  readonly unreadable: Array<{ path: string; error: string }>;
}

export async function findPinningOverlays(pinned: string, paths: readonly string[], objectStore?: () => Promise<ObjectStoreContext>): Promise<VersionPins> {
  const r: VersionPins = { pinning: [], unreadable: [] };
  const visit = async (p: string, depth: number): Promise<void> => {
    const st = await stat(p);
    if (st.isDirectory()) {
      if (depth >= MAX_DEPTH) return;
      for (const name of (await readdir(p)).sort()) await visit(path.join(p, name), depth + 1);
      return;
    }
    if (!st.isFile()) return;
    try {
      const layer = await inspectLayer(p, { objectStore });
      if (layer.backing?.stored === pinned) r.pinning.push(p);
    } catch (err) {
      r.unreadable.push({ path: p, error: (err as Error).message });
    }
  };
  // A path named on the command line must exist (a typo would silently find no pins).
  for (const p of paths) await visit(path.resolve(p), 0);
  return r;
}
