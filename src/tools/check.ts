/**
 * `cownbd check FILE [--json] [--repair]`: consistency check of an overlay's metadata,
 * like `qemu-img check`. Reads the file byte by byte with the formats' exported codecs
 * (it must work on files the driver refuses to open): the format's record does the work
(FormatRecord.check, src/formats/<format>/*-check.ts); this runs it, applies repairs and
summarises. Every finding is classified:
 *
 *   corruption  data may be lost or the image is unusable      → exit 2
 *   leak        wasted or cosmetic (tail bits, garbage, length) → exit 3 (if no corruption)
 *   info        harmless, reported only (e.g. UML's garbage after the path NUL,
 *               docs/cow-format.md#c10)
 *   could not check (unreadable file, ambiguous layout)        → exit 1
 *   no metadata (a raw image; qemu-img's "does not support checks") → exit 63
 *
 * A file named like an overlay (a record's fileSuffix: *.cow, *.add-cow) without the
 * magic is reported as a broken overlay (a 0-byte one with the half-created hint), not
 * checked as raw. After the metadata checks, an overlay that still cannot be OPENED
 * (backing cycle, unsupported backing format, an image file that is a directory, a FIFO,
 * a procfs file…) is corruption: `check` never calls an image clean that `serve` and
 * `info` refuse.
 *
 * --repair fixes only what is provably safe, and ONLY in the overlay's own metadata file
 * (never the backing file, never the add-cow image file, never data sectors):
 *   - clear tail bits (bits past the last sector/cluster; no reader uses them);
 *   - zero garbage in padding that no layout reads (never the v1/v2 bytes that hold
 *     "lost" bits, docs/cow-format.md#c11: they are evidence of real guest writes);
 *   - extend a short file to its full layout length (only adds zeros where reads already
 *     return zeros) or truncate bytes past the end of the data area / bitmap area.
 * After repairing, the file is checked again and the exit code reflects what is left.
 */
import { open, stat } from 'node:fs/promises';
import { CouldNotCheck, type Collected, type Finding, type Severity } from '../formats/check-report.js';
import { HALF_CREATED_HINT } from '../formats/check-report.js';
import { openImage, recordFor, type ImageFormat } from '../formats/open-image.js';
import { FALLBACK_FORMAT, FORMATS } from '../formats/registry.js';
import { readJournal } from './commit-journal.js';
import { EXIT_CORRUPT, EXIT_ERROR, EXIT_LEAKS, EXIT_NO_METADATA, EXIT_OK } from './errors.js';
import type { ObjectStoreContext } from '../objectstore/open.js';

export type { Finding, FindingClass, Severity } from '../formats/check-report.js';

export interface CheckJson {
  filename: string;
  format: string;
  /** clean | corrupt | leaks | error (could not check) | unsupported (no metadata: raw) */
  result: 'clean' | 'corrupt' | 'leaks' | 'error' | 'unsupported';
  exitCode: number;
  findings: Finding[];
  /** Findings fixed by --repair (empty without --repair). */
  repaired: Finding[];
  /** Set when the check could not run to the end. */
  error: string | null;
}

export interface CheckOptions {
  format?: ImageFormat;
  /** Format of the backing file (cow records none; default raw). */
  backingFormat?: string;
  layout?: string;
  backingFile?: string;
  repair?: boolean;
  /** Access to s3:// backings (pinned version present in the store or cached here). */
  objectStore?: () => Promise<ObjectStoreContext>;
}

export async function runCheck(file: string, options: CheckOptions = {}): Promise<CheckJson> {
  let format: string = options.format ?? 'unknown';
  try {
    await requireCheckableFile(file);
    const record = await recordFor(file, options.format);
    format = record.name;
    const named = options.format === undefined && record === FALLBACK_FORMAT ? FORMATS.find((f) => f.fileSuffix && file.endsWith(f.fileSuffix)) : undefined;
    if (named) return summarize(file, named.name, [await missingMagic(file, named.name)], [], null);
    if (!record.check) {
      return { filename: file, format, result: 'unsupported', exitCode: EXIT_NO_METADATA, findings: [], repaired: [], error: `${file}: ${format} image: this format has no metadata to check` };
    }
    let collected = await collect(file, format, options);
    let repaired: Finding[] = [];
    if (options.repair && collected.repairs.length > 0) {
      const fh = await open(file, 'r+');
      try {
        for (const r of collected.repairs) await r.apply(fh);
        await fh.sync();
      } finally {
        await fh.close();
      }
      repaired = collected.repairs.map((r) => r.finding);
      collected = await collect(file, format, options);
    }
    return summarize(file, format, collected.findings, repaired, null);
  } catch (err) {
    const msg = err instanceof CouldNotCheck ? err.message : `${file}: ${(err as Error).message}`;
    return summarize(file, format, [], [], msg);
  }
}

/** stat, never open, first: a FIFO must not hang check, a missing file gets qemu-img's words. */
async function requireCheckableFile(file: string): Promise<void> {
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new CouldNotCheck(`Could not open '${file}': No such file or directory`);
    throw err;
  });
  if (!st.isFile() && !st.isBlockDevice()) throw new CouldNotCheck(`${file}: not a regular file or block device`);
}

function summarize(file: string, format: string, findings: Finding[], repaired: Finding[], error: string | null): CheckJson {
  let exitCode = EXIT_OK;
  let result: CheckJson['result'] = 'clean';
  if (error !== null) {
    exitCode = EXIT_ERROR;
    result = 'error';
  } else if (findings.some((f) => f.severity === 'corruption')) {
    exitCode = EXIT_CORRUPT;
    result = 'corrupt';
  } else if (findings.some((f) => f.severity === 'leak')) {
    exitCode = EXIT_LEAKS;
    result = 'leaks';
  }
  return { filename: file, format, result, exitCode, findings, repaired, error };
}

async function collect(file: string, format: string, options: CheckOptions): Promise<Collected> {
  const c: Collected = { findings: [], repairs: [] };
  const record = await recordFor(file, format);
  const journal = await readJournal(file).catch((err: Error) => {
    c.findings.push({ class: 'commit-incomplete', severity: 'corruption', message: err.message, repairable: false });
    return undefined;
  });
  if (journal) {
    c.findings.push({
      class: 'commit-incomplete',
      severity: 'corruption',
      message: `an in-place commit into "${journal.target}" started ${journal.started} did not finish: the backing file alone is partially updated (the view through ${file} is intact); run \`cownbd commit ${file} --to ${journal.target}\` again to finish it`,
      repairable: false,
    });
  }
  const fh = await open(file, 'r').catch((err: Error) => {
    throw new CouldNotCheck(`${file}: cannot open: ${err.message}`);
  });
  try {
    const backingSizeOf = options.backingFormat && options.backingFormat !== FALLBACK_FORMAT.name ? (f: string) => sizeAs(f, options.backingFormat!) : undefined;
    const objectStore = options.objectStore;
    // The object-store code (zod, the SDK) is loaded only when a header names an s3:// backing.
    const remoteBackingStat = objectStore && (async (a: string) => (await import('../objectstore/open.js')).remoteBackingStat(objectStore)(a));
    await record.check!(file, fh, { layout: options.layout, backingFile: options.backingFile, backingSizeOf, commitPending: journal !== undefined, remoteBackingStat }, c);
  } finally {
    await fh.close();
  }
  await checkOpens(file, format, options, c);
  return c;
}

/** The disk size of `file` opened read-only as `format`. */
async function sizeAs(file: string, format: string): Promise<number> {
  const dev = await openImage(file, { readOnly: true, format });
  try {
    return dev.size;
  } finally {
    await dev.close();
  }
}

async function missingMagic(file: string, claimed: string): Promise<Finding> {
  const head = Buffer.alloc(8);
  const fh = await open(file, 'r');
  let length: number;
  try {
    length = (await fh.stat()).size;
    await fh.read(head, 0, 8, 0);
  } finally {
    await fh.close();
  }
  const what = length === 0 ? `is empty (0 bytes): no ${claimed} header; ${HALF_CREATED_HINT}` : `has no ${claimed} magic (${length} bytes, starting ${head.subarray(0, Math.min(8, length)).toString('hex')})`;
  return { class: 'header', severity: 'corruption', message: `${file}: named like a ${claimed} image but ${what}`, repairable: false };
}

/** The overlay must also open the way serve/info open it (backing chain, image file kinds). */
async function checkOpens(file: string, format: string, options: CheckOptions, c: Collected): Promise<void> {
  if (c.findings.some((f) => f.severity === 'corruption')) return; // already not clean
  try {
    const dev = await openImage(file, { readOnly: true, format, backingFormat: options.backingFormat, layout: options.layout, backingFile: options.backingFile, objectStore: options.objectStore });
    await dev.close();
  } catch (err) {
    c.findings.push({ class: 'unopenable', severity: 'corruption', message: `${file}: cannot be opened: ${(err as Error).message}`, repairable: false });
  }
}

export function formatCheckText(r: CheckJson): string {
  const lines: string[] = [];
  if (r.error) return `${r.error}\nCheck could not be completed.\n`;
  for (const f of r.repaired) lines.push(`Repaired: ${f.class}: ${f.message}`);
  for (const f of r.findings) {
    const tag = f.severity === 'corruption' ? 'ERROR' : f.severity === 'leak' ? 'Leaked/cosmetic' : 'Note';
    lines.push(`${tag}: ${f.class}: ${f.message}${f.repairable && f.severity !== 'info' ? ' (fixable with --repair)' : ''}`);
  }
  const counts = (s: Severity): number => r.findings.filter((f) => f.severity === s).length;
  if (r.result === 'clean') lines.push('No errors were found on the image.');
  else lines.push(`${counts('corruption')} errors and ${counts('leak')} leaked/cosmetic issues were found on the image.`);
  return `${lines.join('\n')}\n`;
}
