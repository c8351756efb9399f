/**
 * The in-place commit journal: `<overlay>.commit-journal`, a small JSON file next to the
 * overlay that exists exactly while an in-place commit may have left the backing file
 * partially updated.
 *
 *   1. write journal (tmp file, fsync, rename, fsync dir)   ← before the first backing write
 *   2. copy overlay sectors/clusters into the backing, fsync the backing
 *   3. cow: rewrite the overlay header's mtime to the backing's new mtime, fsync
 *   4. unlink journal, fsync dir                             ← commit complete
 *
 * Why this is safe to interrupt anywhere: the copy only writes backing sectors whose bit is
 * set in the overlay, with the overlay's own data, so the view THROUGH the overlay never
 * changes, and repeating the copy is idempotent. What a crash breaks is (a) the backing
 * file alone (half old, half new) and (b) for cow, the header mtime (the backing's mtime
 * moved). The journal tells `check` and `info` about (a)/(b), and tells `commit` to resume:
 * it then skips the mtime comparison (size must still match) and redoes the whole copy.
 */
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { syncDir } from '../util/atomic-file.js';
import path from 'node:path';

export interface CommitJournal {
  readonly version: 1;
  readonly tool: 'cownbd commit';
  /** Absolute path of the overlay being committed. */
  readonly overlay: string;
  readonly overlayFormat: string;
  /** Absolute path of the backing file being written. */
  readonly target: string;
  readonly targetFormat: string;
  /** cow: header size and mtime before the commit began (add-cow: size of the target). */
  readonly expectedSize: number;
  readonly headerMtime: number | null;
  readonly started: string;
}

export function journalPath(overlay: string): string {
  return `${path.resolve(overlay)}.commit-journal`;
}

/** The journal of `overlay`, or undefined when no commit is in progress. Throws on a corrupt journal. */
export async function readJournal(overlay: string): Promise<CommitJournal | undefined> {
  const file = journalPath(overlay);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let j: CommitJournal;
  try {
    j = JSON.parse(text) as CommitJournal;
  } catch {
    throw new Error(`${file}: commit journal is not valid JSON; inspect it, then delete it by hand`);
  }
  if (j.tool !== 'cownbd commit' || j.version !== 1 || typeof j.target !== 'string') {
    throw new Error(`${file}: not a cownbd commit journal (tool=${String(j.tool)}, version=${String(j.version)})`);
  }
  return j;
}

export async function writeJournal(overlay: string, j: CommitJournal): Promise<void> {
  const file = journalPath(overlay);
  const tmp = `${file}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(`${JSON.stringify(j, null, 2)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  await syncDir(path.dirname(file));
}

export async function removeJournal(overlay: string): Promise<void> {
  const file = journalPath(overlay);
  await unlink(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await syncDir(path.dirname(file));
}

export { syncDir };
