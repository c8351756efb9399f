/**
 * The backing file of a COW: where it is, and whether it is still the file the COW was
 * made against (docs/cow-format.md#backing-checks, docs/cow-format.md#backing-paths,
 * decisions docs/cow-format.md#c3 to docs/cow-format.md#c5).
 *
 * Resolution of a RELATIVE stored path (docs/cow-format.md#c5):
 *   - UML layouts (v1, v2, v3, v3-broken): relative to the process's current directory,
 *     exactly like UML and uml_moo (a COW with a relative path only works from the right
 *     CWD there too; createCow never writes relative paths).
 *   - QEMU layouts: relative to the COW file's directory (QEMU's generic backing rule).
 *   - options.backingFile (like `uml_moo -b`): a command-line path, relative to the CWD.
 *     It replaces the stored path but must still validate.
 *
 * Validation, in UML's order and with UML's wording:
 *   1. stat size must equal the header's size:  "Size mismatch (H vs A) of COW header vs backing file"
 *   2. whole-second st_mtime must equal the header's u32 mtime zero-extended:
 *                                               "mtime mismatch (H vs A) of COW header vs backing file"
 *      skipped with ignoreMtime (recovery), and for QEMU layouts (QEMU never checked it, docs/cow-format.md#c18).
 */
import { quotedPath } from '../../util/quoted-path.js';
import { stat, realpath } from 'node:fs/promises';
import path from 'node:path';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { isQemuLayout, type CowHeader, type CowLayoutName } from './cow-header.js';

export class CowBackingError extends Error {
  readonly code = 'COW_ERR_BACKING';
  constructor(message: string) {
    super(message);
    this.name = 'CowBackingError';
  }
}

export interface BackingStat {
  readonly size: number;
  /** st_mtime in whole seconds (floor, like time_t), possibly negative or >= 2^32. */
  readonly mtime: number;
}

/** Absolute path the stored (or overriding) backing path refers to, per the rules above. */
export function resolveBackingPath(layout: CowLayoutName, stored: string, cowPath: string, override?: string): string {
  if (override !== undefined) {
    if (override === '') throw new CowBackingError('backing file override is empty');
    return isObjectStoreUri(override) ? override : path.resolve(override);
  }
  if (stored === '') throw new CowBackingError(`${cowPath}: the COW header names no backing file (empty backing_file)`);
  // A published object-store image (docs/object-store.md): an address, not a path.
  if (isObjectStoreUri(stored)) return stored;
  if (isQemuLayout(layout)) return path.resolve(path.dirname(path.resolve(cowPath)), stored);
  return path.resolve(stored);
}

export async function statBacking(file: string): Promise<BackingStat> {
  let st;
  try {
    st = await stat(file, { bigint: true });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new CowBackingError(`Couldn't stat backing file ${quotedPath(file)}: ${e.code ?? e.message}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new CowBackingError(`backing file ${quotedPath(file)} is not a regular file`);
  const ns = st.mtimeNs;
  const sec = ns >= 0n ? ns / 1_000_000_000n : -((-ns + 999_999_999n) / 1_000_000_000n);
  return { size: Number(st.size), mtime: Number(sec) };
}

/** Throws with UML's message when the backing file no longer matches the header. */
export function checkBacking(h: CowHeader, actual: BackingStat, file: string, options: { ignoreMtime?: boolean; sizeOverride?: number } = {}): void {
  const size = options.sizeOverride ?? actual.size;
  if (h.size !== size) {
    throw new CowBackingError(`Size mismatch (${h.size} vs ${size}) of COW header vs backing file ${quotedPath(file)}`);
  }
  if (options.ignoreMtime || isQemuLayout(h.layout)) return;
  if (h.mtime !== actual.mtime) {
    throw new CowBackingError(`mtime mismatch (${h.mtime} vs ${actual.mtime}) of COW header vs backing file ${quotedPath(file)} (override with --ignore-mtime if the backing content is unchanged)`);
  }
}

/**
 * uml_mkcow's absolutize(): resolve the directory part physically (getcwd after chdir),
 * keep the final component as given, so a final-component symlink stays a symlink
 * (docs/cow-format.md#c5). Unlike UML there is no 256-byte CWD limit.
 */
export async function absolutizeLikeUml(file: string): Promise<string> {
  if (file === '') throw new CowBackingError('backing file path is empty');
  const slash = file.lastIndexOf('/');
  if (slash < 0) return path.join(await realpath(process.cwd()), file);
  const dir = slash === 0 ? '/' : file.slice(0, slash);
  const base = file.slice(slash + 1);
  const realDir = await realpath(dir);
  return realDir === '/' ? `/${base}` : `${realDir}/${base}`;
}
