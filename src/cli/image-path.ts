/**
 * Checks on the paths an operator types, made with stat() BEFORE anything opens them, so
 * that every mistake ends in one sentence that names the path and says what to do:
 *
 *   missing file         Could not open 'X': No such file or directory   (qemu-img's words)
 *   missing directory    ... directory 'D' does not exist
 *   directory            'X' is a directory, not an image file
 *   FIFO/socket/device   refused: opening a FIFO would block until a writer appears, and
 *                        a socket or device is not an image (the server would hang or lie
 *                        about the size)
 *   not writable         ... serve it read-only with -r, or make it writable
 *
 * The drivers keep their own checks (they are also used as a library); these run first
 * in the CLI, where the operator can act on the message.
 */
import { constants } from 'node:fs';
import { access, mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { isObjectStoreUri } from '../objectstore/uri.js';

/** A message meant for the operator (main.ts prints it as one line, status 1). */
export class PathError extends Error {
  override name = 'PathError';
}

function kindOf(st: import('node:fs').Stats): string | undefined {
  if (st.isFile()) return undefined;
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

/** strerror-style text for the errno codes operators meet here. */
function strerror(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ENOENT':
      return 'No such file or directory';
    case 'EACCES':
      return 'Permission denied';
    case 'EPERM':
      return 'Operation not permitted';
    case 'EROFS':
      return 'Read-only file system';
    case 'ENOTDIR':
      return 'Not a directory';
    case 'ELOOP':
      return 'Too many levels of symbolic links';
    default:
      return err.message;
  }
}

/** Where in `file`'s path the first missing directory is, or undefined. */
async function missingDirectory(file: string): Promise<string | undefined> {
  let dir = path.dirname(path.resolve(file));
  let missing: string | undefined;
  for (;;) {
    const exists = await stat(dir).then(
      (st) => st.isDirectory(),
      () => false,
    );
    if (exists) return missing;
    missing = dir;
    const parent = path.dirname(dir);
    if (parent === dir) return missing;
    dir = parent;
  }
}

export interface ImagePathOptions {
  /** The image will be opened for writing (serve without -r). */
  readonly write?: boolean;
  /** How the hint for "not writable" reads (default: serve's -r). */
  readonly readOnlyHint?: string;
  /** A missing file is the command's to report (check --json answers it in JSON). */
  readonly missingOk?: boolean;
}

/** An existing regular file that can be opened as asked, or a PathError saying why not. */
export async function checkImagePath(file: string, options: ImagePathOptions = {}): Promise<void> {
  let st;
  try {
    st = await stat(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' && options.missingOk) return;
    const dir = e.code === 'ENOENT' ? await missingDirectory(file) : undefined;
    const where = dir ? ` (directory '${dir}' does not exist)` : '';
    throw new PathError(`Could not open '${file}': ${strerror(e)}${where}`);
  }
  const kind = kindOf(st);
  if (kind) {
    const what = st.isDirectory() ? 'give the path of an image file' : 'cownbd serves and reads regular image files only';
    throw new PathError(`'${file}' is ${kind}, not an image file: ${what}`);
  }
  try {
    await access(file, constants.R_OK);
  } catch (err) {
    throw new PathError(`Could not open '${file}': ${strerror(err as NodeJS.ErrnoException)}`);
  }
  if (!options.write) return;
  try {
    await access(file, constants.W_OK);
  } catch (err) {
    const hint = options.readOnlyHint ?? 'serve it read-only with -r (--read-only), or make it writable';
    throw new PathError(`Could not open '${file}' for writing: ${strerror(err as NodeJS.ErrnoException)}: ${hint}`);
  }
}

/** A file about to be created: its directory must exist (and `file` must not be a directory). */
export async function checkNewFilePath(file: string): Promise<void> {
  const dir = await missingDirectory(file);
  if (dir) throw new PathError(`Could not create '${file}': directory '${dir}' does not exist (create it first, e.g. mkdir -p '${path.dirname(path.resolve(file))}')`);
  const st = await stat(file).catch(() => undefined);
  if (st?.isDirectory()) throw new PathError(`Could not create '${file}': it is a directory; give a file name`);
}

/** A directory cownbd will create files in (created if missing by the caller): not a file. */
export async function checkDirectoryPath(dir: string, option: string, create: boolean): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (st && !st.isDirectory()) throw new PathError(`${option} '${dir}' is ${kindOf(st) ?? 'a file'}, not a directory: give a directory`);
  if (!st) {
    // A mistyped directory, created silently, would give every machine a blank disk.
    if (!create) throw new PathError(`${option} '${dir}' does not exist: create it (mkdir -p '${dir}') or pass --create-dirs`);
    await mkdir(dir, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
      throw new PathError(`${option} '${dir}' cannot be created: ${err.code ?? err.message}`);
    });
  }
  await probeWritable(dir, option);
}

/**
 * Overlays are created in `dir` when machines connect: an unwritable directory must stop
 * the start, not refuse every machine later. access(2) answers for root too where it
 * matters here: EROFS on a read-only mount, EPERM on an immutable directory.
 */
async function probeWritable(dir: string, option: string): Promise<void> {
  try {
    await access(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new PathError(`${option} '${dir}' is not writable (${e.code ?? e.message}${e.code === 'EROFS' ? ': read-only file system' : ''}): overlays are created there`);
  }
}

/** For a listening Unix socket path: its directory must exist. */
export async function checkSocketPath(file: string): Promise<void> {
  const dir = await missingDirectory(file);
  if (dir) throw new PathError(`cannot listen on ${file}: directory '${dir}' does not exist (create it first, e.g. mkdir -p '${path.dirname(path.resolve(file))}')`);
  const st = await stat(file).catch(() => undefined);
  if (st && !st.isSocket()) throw new PathError(`cannot listen on ${file}: it exists and is ${kindOf(st) ?? 'a regular file'}; cownbd only replaces a stale socket`);
}

/** Positional arguments of the image tool: which are inputs (must be images), which outputs. */
const TOOL_ARGS: Record<string, { inputs: number[]; outputs: number[] }> = {
  info: { inputs: [0], outputs: [] },
  // check reports an unreadable file in its own (JSON) result instead: see runCheck.
  map: { inputs: [0], outputs: [] },
  commit: { inputs: [0], outputs: [] },
  rebase: { inputs: [0], outputs: [] },
  finalize: { inputs: [0], outputs: [] },
  convert: { inputs: [0], outputs: [1] },
  create: { inputs: [], outputs: [0] },
};

/** Before any image tool command runs: its file arguments, checked as above. */
export async function checkToolPaths(command: string, args: readonly unknown[]): Promise<void> {
  const spec = TOOL_ARGS[command];
  if (!spec) return;
  // s3:// published images are addresses, not paths (checked when opened).
  // Kinds that would hang or mislead are refused here; a missing file is left to the
  // command, which reports it in its own format (check --json included).
  for (const i of spec.inputs) if (typeof args[i] === 'string' && !isObjectStoreUri(args[i])) await checkImagePath(args[i], { missingOk: true });
  for (const i of spec.outputs) if (typeof args[i] === 'string') await checkNewFilePath(args[i]);
}
