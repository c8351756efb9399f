/**
 * The manifest: the immutable description of one published image version.
 *
 *   { "format": "cownbd-manifest", "formatVersion": 1, "version": "20261202T141500Z-1a2b3c4d",
 *     "created": "2026-12-02T14:15:00.000Z", "virtualSize": 1073741824, "chunkSize": 1048576,
 *     "hash": "sha256", "chunkPrefix": "cownbd-chunks/sha256/", "source": "golden.img",
 *     "chunks": ["9f86…", null, …] }
 *
 * chunks[i] covers bytes [i*chunkSize, min(virtualSize, (i+1)*chunkSize)); null means the
 * chunk is all zeros and was not stored. A stored chunk's object key is chunkPrefix + hash,
 * so identical chunks of any image or version are one object (content addressing). The
 * manifest is written once, after every chunk it names exists, and never rewritten.
 * Pure codec: no I/O. Validation names the field and the value that is wrong.
 */
import { z } from 'zod';
import { ChunkTable, compactManifest, HASH_BYTES, type CompactManifest } from './chunk-table.js';
import { VERSION_PATTERN } from './uri.js';

export const MANIFEST_FORMAT = 'cownbd-manifest';
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;
const HASH = /^[0-9a-f]{64}$/;
/** Bounds the chunks array: 2^24 chunks × 64 MiB chunks is far beyond any disk; 1 GiB at 64 KiB is 16 Ki. */
export const MAX_CHUNKS = 1 << 24;

export interface Manifest {
  readonly version: string;
  readonly created: string;
  readonly virtualSize: number;
  readonly chunkSize: number;
  readonly chunkPrefix: string;
  readonly source?: string;
  /** SHA-256 (hex) per chunk, null for all-zero chunks. */
  readonly chunks: readonly (string | null)[];
}

/** The fields every form of a manifest carries (JSON here, binary in manifest-binary.ts). */
export const manifestFieldsSchema = z.object({
  version: z.string().regex(VERSION_PATTERN),
  created: z.iso.datetime(),
  virtualSize: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  chunkSize: z.number().int().min(MIN_CHUNK_SIZE).max(MAX_CHUNK_SIZE),
  // Key segments only; "." and ".." would be resolved away by HTTP clients (another object).
  chunkPrefix: z
    .string()
    .max(512)
    .regex(/^(?:[A-Za-z0-9._-]+\/)*$/)
    .refine((p) => !p.split('/').some((seg) => seg === '.' || seg === '..'), 'no "." or ".." segments'),
  source: z.string().max(4096).optional(),
});

const schema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  formatVersion: z.literal(1),
  ...manifestFieldsSchema.shape,
  hash: z.literal('sha256'),
  // Entries are checked by chunkTableFromJson (one pass straight into the compact table:
  // a 1 TiB image has a million of them, too many for a schema per entry).
  chunks: z.array(z.unknown()).max(MAX_CHUNKS),
});

const ZERO_HASH = '0'.repeat(64);

export class ManifestError extends Error {
  override name = 'ManifestError';
}

export function chunkCount(virtualSize: number, chunkSize: number): number {
  return Math.ceil(virtualSize / chunkSize);
}

/** Bytes in chunk `index` (the last one may be short). */
export function chunkLength(m: Pick<Manifest, 'virtualSize' | 'chunkSize'>, index: number): number {
  return Math.min(m.chunkSize, m.virtualSize - index * m.chunkSize);
}

export function encodeManifest(m: Manifest): Buffer {
  checkShape({ ...m, chunkCount: m.chunks.length }, 'encodeManifest');
  const doc = {
    format: MANIFEST_FORMAT,
    formatVersion: 1,
    version: m.version,
    created: m.created,
    virtualSize: m.virtualSize,
    chunkSize: m.chunkSize,
    hash: 'sha256',
    chunkPrefix: m.chunkPrefix,
    ...(m.source === undefined ? {} : { source: m.source }),
    chunks: m.chunks,
  };
  return Buffer.from(`${JSON.stringify(doc)}\n`);
}

/**
 * Parse and validate a manifest object; `where` (its address) prefixes every error. The
 * result is compact (chunk-table.ts): its hashes are one Buffer, `chunks` is made on demand.
 */
export function decodeManifest(bytes: Buffer, where: string): CompactManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ManifestError(`${where}: manifest is not JSON (${(err as Error).message})`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.join('.') || '(document)';
    const value = issue.path.reduce<unknown>((v, k) => (v as Record<PropertyKey, unknown> | undefined)?.[k], raw);
    throw new ManifestError(`${where}: manifest field ${field} = ${JSON.stringify(value)?.slice(0, 80)}: ${issue.message}`);
  }
  const d = parsed.data;
  const fields = {
    version: d.version,
    created: d.created,
    virtualSize: d.virtualSize,
    chunkSize: d.chunkSize,
    chunkPrefix: d.chunkPrefix,
    ...(d.source === undefined ? {} : { source: d.source }),
  };
  checkShape({ ...fields, chunkCount: d.chunks.length }, where);
  return compactManifest(fields, chunkTableFromJson(d.chunks, where));
}

/** JSON `chunks` entries (64 lower-case hex digits or null) into a table; names the first bad entry. */
function chunkTableFromJson(chunks: readonly unknown[], where: string): ChunkTable {
  const bytes = Buffer.alloc(chunks.length * HASH_BYTES);
  for (let i = 0; i < chunks.length; i++) {
    const h = chunks[i];
    if (h === null) continue;
    const why = typeof h !== 'string' || !HASH.test(h) ? 'not 64 lower-case hex digits or null' : h === ZERO_HASH ? 'reserved (it marks a zero chunk)' : undefined;
    if (why !== undefined) throw new ManifestError(`${where}: manifest field chunks.${i} = ${JSON.stringify(h)?.slice(0, 80)}: ${why}`);
    bytes.write(h as string, i * HASH_BYTES, HASH_BYTES, 'hex');
  }
  return new ChunkTable(bytes);
}

/** Cross-field rules zod cannot say: power-of-two chunk size, chunk count matches the size. */
export function checkShape(m: Pick<Manifest, 'virtualSize' | 'chunkSize'> & { chunkCount: number }, where: string): void {
  if ((m.chunkSize & (m.chunkSize - 1)) !== 0 || m.chunkSize < MIN_CHUNK_SIZE || m.chunkSize > MAX_CHUNK_SIZE) {
    throw new ManifestError(`${where}: manifest field chunkSize = ${m.chunkSize}: must be a power of two from 64 KiB to 64 MiB`);
  }
  const want = chunkCount(m.virtualSize, m.chunkSize);
  if (m.chunkCount !== want) {
    throw new ManifestError(`${where}: manifest field chunks has ${m.chunkCount} entries; virtualSize ${m.virtualSize} / chunkSize ${m.chunkSize} needs ${want}`);
  }
}

/** A new, sortable version id: UTC timestamp (ms) + 32 random bits. */
export function newVersionId(now: Date, random: Buffer): string {
  const iso = now.toISOString(); // 2026-12-02T14:15:00.123Z
  const stamp = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}T${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 23)}Z`;
  return `${stamp}-${random.subarray(0, 4).toString('hex')}`;
}

/** Whole seconds since the epoch of the manifest's creation: what a cow header records as mtime. */
export function manifestMtime(m: Manifest): number {
  return Math.floor(Date.parse(m.created) / 1000);
}
