/**
 * The format registry: every image format and backing type cownbd knows, in one list.
 * Adding one is a folder src/formats/<name>/ exporting a FormatRecord plus one line here.
 *
 * Selection for an image the OPERATOR named (never for backings, which are opened by the
 * format their overlay records or the operator gives; a guest can write any magic):
 *   1. a record whose claims(spec) accepts the spec (e.g. a URI scheme), else
 *   2. a record whose probe(head) recognises the file's first bytes, else
 *   3. raw (FALLBACK_FORMAT).
 */
import { openChecked } from '../block/open-guard.js';
import type { BlockDevice } from '../block/block-device.js';
import { addCowFormat } from './add-cow/format.js';
import { cowFormat } from './cow/format.js';
import type { FormatRecord } from './format-record.js';
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

/** Bytes read for probe(); every record's magic fits in them. */
const PROBE_BYTES = 8;

export class UnknownFormatError extends Error {
  readonly code = 'EINVAL';
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

/** The record for an image the operator named: claimed, else probed, else raw. */
export async function detectFormat(spec: string, formats: readonly FormatRecord[] = FORMATS): Promise<FormatRecord> {
  const claimed = formats.find((f) => f.claims?.(spec));
  if (claimed) return claimed;
  // The checked open: a FIFO or a kernel interface is refused before anything can block on it.
  const fh = await openChecked(spec, { writable: false, what: 'image file', allowBlockDevice: true });
  try {
    const head = Buffer.alloc(PROBE_BYTES);
    const { bytesRead } = await fh.read(head, 0, PROBE_BYTES, 0);
    const view = head.subarray(0, bytesRead);
    return formats.find((f) => f.probe?.(view)) ?? FALLBACK_FORMAT;
  } finally {
    await fh.close();
  }
}

/**
 * The record for a backing named `name` by its overlay or the operator: a spec some record
 * claims by its form (e.g. an object-store URI) is that record's whatever the default name.
 */
export function backingRecord(spec: string, name: string, formats: readonly FormatRecord[] = FORMATS): FormatRecord {
  return formats.find((f) => f.claims?.(spec)) ?? formatByName(name);
}
