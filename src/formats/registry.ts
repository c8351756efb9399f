/**
 * The format registry: every image format and backing type cownbd knows, in one list.
 * Adding one is a folder src/formats/<name>/ exporting a FormatRecord plus one line here.
 *
 * Selection for an image the OPERATOR named (never for backings, which are opened by the
 * format their overlay records or the operator gives; a guest can write any magic):
 *   1. a record whose claims(spec) accepts the spec (e.g. a URI scheme), else
 *   2. a record whose probe(head) recognises the file's first bytes, else
 *   3. a FOREIGN format's magic (foreign-magic.ts: qcow2, vmdk, vhdx, ...): refused with
 *      ForeignImageError (or, for a foreign format marked read-only, its record), else
 *   4. raw (FALLBACK_FORMAT).
 * Step 3 is why an explicit `-f raw` exists: it is the only way to use a foreign file's
 * bytes as a raw disk. A backing the operator names without a format (--base, create
 * --backing) gets step 3 too (namedBackingFormat); backings named in headers never do.
 */
import type { BlockDevice } from '../block/block-device.js';
import { addCowFormat } from './add-cow/format.js';
import { cowFormat } from './cow/format.js';
import type { FormatRecord } from './format-record.js';
import { detectForeign, FOREIGN_FORMATS, foreignMessage, type ForeignFormat } from './foreign-magic.js';
import { foreignFormatOf, readFileEnds } from './foreign-probe.js';
import { qcow2Format } from './qcow2/format.js';
import { rawFormat } from './raw/format.js';
import { s3Format } from './s3/format.js';

export const FORMATS: readonly FormatRecord[] = [rawFormat, cowFormat, addCowFormat, qcow2Format, s3Format];

/**
 * The names an operator (or an overlay header) selects a format by. Records that claim
 * specs by their form (s3://) are selected by the spec alone and are not listed.
 */
export const FORMAT_NAMES: readonly string[] = FORMATS.filter((f) => !f.claims).map((f) => f.name);

/** What an unrecognised file is. */
export const FALLBACK_FORMAT: FormatRecord = rawFormat;

/** The overlay format the export providers make on demand (one v3 cow per name). */
export const DEFAULT_OVERLAY_FORMAT: FormatRecord = cowFormat;

export class UnknownFormatError extends Error {
  readonly code = 'EINVAL';
}

/**
 * An image the operator named carries a foreign format's magic and no format was given:
 * one line naming the path, the format and what to do. `rawOption` is how the command
 * at hand says "raw" (callers that know better re-word it with saying()).
 */
export class ForeignImageError extends Error {
  readonly code = 'EMEDIUMTYPE';
  constructor(
    readonly path: string,
    readonly foreign: ForeignFormat,
    readonly rawOption = '-f raw',
  ) {
    super(foreignMessage(path, foreign, rawOption));
  }

  /** The same refusal, naming the option of the command at hand (`format=raw`, `--base-format raw`). */
  saying(rawOption: string): ForeignImageError {
    return new ForeignImageError(this.path, this.foreign, rawOption);
  }
}

export function formatByName(name: string): FormatRecord {
  const f = FORMATS.find((r) => r.name === name);
  if (!f) throw new UnknownFormatError(`format "${name}" is not supported (supported: ${FORMAT_NAMES.join(', ')})`);
  return f;
}

/** The record of an open device's top layer (by the format it describes itself with). */
export function recordOf(device: BlockDevice): FormatRecord | undefined {
  const name = device.describe().format;
  return FORMATS.find((f) => f.name === name);
}

/** Formats that can create images (for the CLI's choices). */
export function creatableFormats(): string[] {
  return FORMATS.filter((f) => f.create).map((f) => f.name);
}

/** The record that claims `spec` by its form (e.g. a URI scheme), if any. */
export function claimingRecord(spec: string, formats: readonly FormatRecord[] = FORMATS): FormatRecord | undefined {
  return formats.find((f) => f.claims?.(spec));
}

/** What probing an operator-named file found: a record, or a foreign format (never refused here). */
export type Probed =
  | { readonly record: FormatRecord; readonly foreign?: undefined }
  | { readonly record?: undefined; readonly foreign: ForeignFormat; readonly virtualSize: number | undefined };

/** What an image the operator named is: claimed, else probed by a record, else foreign, else raw. */
export async function probeImage(spec: string, formats: readonly FormatRecord[] = FORMATS, foreignFormats: readonly ForeignFormat[] = FOREIGN_FORMATS): Promise<Probed> {
  const claimed = formats.find((f) => f.claims?.(spec));
  if (claimed) return { record: claimed };
  const { head, tail, size } = await readFileEnds(spec);
  const record = formats.find((f) => f.probe?.(head));
  if (record) return { record };
  const foreign = detectForeign(head, tail, foreignFormats);
  if (foreign) return { foreign, virtualSize: foreign.virtualSize?.(head, tail, size) };
  return { record: FALLBACK_FORMAT };
}

/**
 * The record for an image the operator named: claimed, else probed, else raw. A foreign
 * image is refused (ForeignImageError), unless the table marks it read-only: then the
 * record of that name serves it.
 */
export async function detectFormat(spec: string, formats: readonly FormatRecord[] = FORMATS, foreignFormats: readonly ForeignFormat[] = FOREIGN_FORMATS): Promise<FormatRecord> {
  const p = await probeImage(spec, formats, foreignFormats);
  if (p.record) return p.record;
  const name = p.foreign.name;
  if (p.foreign.support === 'read-only') return formats.find((f) => f.name === name) ?? formatByName(name);
  throw new ForeignImageError(spec, p.foreign);
}

/**
 * The format of a backing the OPERATOR named (--base, --ephemeral IMAGE, create --backing):
 * `explicit` when given; otherwise raw as always (an overlay format's magic does not
 * change that), except that a foreign image is refused, naming `rawOption`, the option
 * that says "raw" there. A file that cannot be read is left to the open that follows,
 * which reports it in its own words.
 */
export async function namedBackingFormat(spec: string, explicit: string | undefined, rawOption: string, foreignFormats: readonly ForeignFormat[] = FOREIGN_FORMATS): Promise<string> {
  if (explicit !== undefined || claimingRecord(spec)) return explicit ?? FALLBACK_FORMAT.name;
  const foreign = await foreignFormatOf(spec, foreignFormats);
  if (!foreign) return FALLBACK_FORMAT.name;
  if (foreign.support === 'read-only') return foreign.name;
  throw new ForeignImageError(spec, foreign, rawOption);
}

/**
 * The record for a backing named `name` by its overlay or the operator: a spec some record
 * claims by its form (e.g. an object-store URI) is that record's whatever the default name.
 */
export function backingRecord(spec: string, name: string, formats: readonly FormatRecord[] = FORMATS): FormatRecord {
  return formats.find((f) => f.claims?.(spec)) ?? formatByName(name);
}
