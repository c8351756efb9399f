/**
 * The compact (binary) manifest: how a machine keeps a published version's manifest on
 * disk next to its chunk cache (manifest-cache.ts). Layout, byte by byte, in
 * docs/object-store.md ("Compact manifest file"); all integers little-endian.
 *
 *   0   8   magic "cownbdMF"         36  32  SHA-256 of the published manifest's bytes
 *   8   4   formatVersion = 1        68  S   strings: image, version, created, chunkPrefix
 *   12  4   flags (bit 0: source)              [, source] — each u16 length + UTF-8
 *   16  8   virtualSize              68+S   chunkCount × 32: SHA-256 per chunk (zeros: zero chunk)
 *   24  4   chunkSize                end−32 32: SHA-256 of every byte before it
 *   28  4   chunkCount
 *   32  4   S (strings length)
 *
 * Why binary: a 1 TiB image's JSON manifest is ~70 MB of hex and takes ~1 s to parse and
 * ~100 MiB of heap; this form is read into one Buffer, checked with one SHA-256 and used
 * as it is (the table is a view of the file's bytes): ~100 ms for 1 TiB (measured in the doc).
 * The published form stays JSON (every server and gc ever released reads it).
 *
 * Decoding reads every field from its explicit offset and validates it on its own; an
 * error names the field and its value. Pure codec, but for readCompactFile (read + hash).
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { ChunkTable, compactManifest, HASH_BYTES, type CompactManifest } from './chunk-table.js';
import { parseObjectStoreUri } from './uri.js';
import { checkShape, MAX_CHUNKS, manifestFieldsSchema, ManifestError, type Manifest } from './manifest.js';

export const COMPACT_MAGIC = 'cownbdMF';
const FORMAT_VERSION = 1;
const FLAG_SOURCE = 1;
const HEADER = 68;
const TRAILER = 32;
const MAX_STRINGS = 64 * 1024;

export interface CompactManifestFile {
  readonly manifest: CompactManifest;
  /** bucket/prefix the version belongs to (guards against a file put in the wrong folder). */
  readonly image: string;
  /** SHA-256 (hex) of the published manifest object's exact bytes: which object this came from. */
  readonly publishedSha256: string;
}

export function encodeCompactManifest(m: Manifest, image: string, publishedSha256: string): Buffer {
  const table = (m as Partial<CompactManifest>).table ?? ChunkTable.fromHex(m.chunks);
  const strings = [image, m.version, m.created, m.chunkPrefix, ...(m.source === undefined ? [] : [m.source])].map((s) => {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(2);
    len.writeUInt16LE(b.length);
    return Buffer.concat([len, b]);
  });
  const stringBytes = Buffer.concat(strings);
  const head = Buffer.alloc(HEADER);
  head.write(COMPACT_MAGIC, 0, 'latin1');
  head.writeUInt32LE(FORMAT_VERSION, 8);
  head.writeUInt32LE(m.source === undefined ? 0 : FLAG_SOURCE, 12);
  head.writeBigUInt64LE(BigInt(m.virtualSize), 16);
  head.writeUInt32LE(m.chunkSize, 24);
  head.writeUInt32LE(table.count, 28);
  head.writeUInt32LE(stringBytes.length, 32);
  head.write(publishedSha256, 36, HASH_BYTES, 'hex');
  const body = Buffer.concat([head, stringBytes, table.bytes]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

type Bad = (field: string, value: unknown, why: string) => never;

/** The length-prefixed strings at HEADER: image, version, created, chunkPrefix[, source]; they must fill `length` exactly. */
function readStrings(data: Buffer, hasSource: boolean, length: number, bad: Bad): Record<string, string> {
  const end = HEADER + length;
  const strings: Record<string, string> = {};
  let pos = HEADER;
  for (const name of ['image', 'version', 'created', 'chunkPrefix', ...(hasSource ? ['source'] : [])]) {
    if (pos + 2 > end) bad(name, null, `missing: the strings end at byte ${end}`);
    const len = data.readUInt16LE(pos);
    if (pos + 2 + len > end) bad(`${name} length`, len, `runs past the strings' end (byte ${end})`);
    strings[name] = data.toString('utf8', pos + 2, pos + 2 + len);
    pos += 2 + len;
  }
  if (pos !== end) bad('stringsLength', length, `the strings take ${pos - HEADER} bytes`);
  return strings;
}

/**
 * Decode a compact manifest file; `where` (its path) prefixes every error. `bodySha256`: the
 * SHA-256 of every byte but the last 32, when the caller hashed while reading (readCompactFile).
 */
export function decodeCompactManifest(data: Buffer, where: string, bodySha256?: Buffer): CompactManifestFile {
  const bad: Bad = (field, value, why) => {
    throw new ManifestError(`${where}: compact manifest field ${field} = ${JSON.stringify(value)?.slice(0, 80)}: ${why}`);
  };
  if (data.length < HEADER + TRAILER) bad('(file length)', data.length, `shorter than the ${HEADER + TRAILER}-byte header and checksum`);
  const magic = data.toString('latin1', 0, 8);
  if (magic !== COMPACT_MAGIC) bad('magic', magic, `expected "${COMPACT_MAGIC}"`);
  const formatVersion = data.readUInt32LE(8);
  if (formatVersion !== FORMAT_VERSION) bad('formatVersion', formatVersion, `expected ${FORMAT_VERSION}`);
  const bodyEnd = data.length - TRAILER;
  const sum = bodySha256 ?? createHash('sha256').update(data.subarray(0, bodyEnd)).digest();
  if (!sum.equals(data.subarray(bodyEnd))) bad('checksum', data.toString('hex', bodyEnd), 'does not match the file (damaged or torn)');

  const flags = data.readUInt32LE(12);
  if ((flags & ~FLAG_SOURCE) !== 0) bad('flags', flags, 'unknown bits set');
  const virtualSize = data.readBigUInt64LE(16);
  if (virtualSize > BigInt(Number.MAX_SAFE_INTEGER)) bad('virtualSize', virtualSize.toString(), 'above 2^53 - 1');
  const chunkSize = data.readUInt32LE(24);
  const chunkCount = data.readUInt32LE(28);
  if (chunkCount > MAX_CHUNKS) bad('chunkCount', chunkCount, `above ${MAX_CHUNKS}`);
  const stringsLength = data.readUInt32LE(32);
  if (stringsLength > MAX_STRINGS) bad('stringsLength', stringsLength, `above ${MAX_STRINGS}`);
  const tableStart = HEADER + stringsLength;
  const wantLength = tableStart + chunkCount * HASH_BYTES + TRAILER;
  if (data.length !== wantLength) bad('(file length)', data.length, `header says ${wantLength} (${stringsLength} bytes of strings, ${chunkCount} chunks)`);

  const strings = readStrings(data, (flags & FLAG_SOURCE) !== 0, stringsLength, bad);
  try {
    const u = parseObjectStoreUri(`s3://${strings.image!}`);
    if (u.version !== undefined) throw new Error('it names a version');
  } catch (err) {
    bad('image', strings.image, `not BUCKET/PREFIX (${(err as Error).message})`);
  }

  const fields = {
    version: strings.version,
    created: strings.created,
    virtualSize: Number(virtualSize),
    chunkSize,
    chunkPrefix: strings.chunkPrefix,
    ...(strings.source === undefined ? {} : { source: strings.source }),
  };
  const parsed = manifestFieldsSchema.safeParse(fields);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = String(issue.path[0]);
    bad(field, (fields as Record<string, unknown>)[field], issue.message);
  }
  checkShape({ virtualSize: fields.virtualSize, chunkSize, chunkCount }, where);
  const table = new ChunkTable(data.subarray(tableStart, tableStart + chunkCount * HASH_BYTES));
  return { manifest: compactManifest(parsed.data!, table), image: strings.image!, publishedSha256: data.toString('hex', 36, 68) };
}

/**
 * Read a compact manifest file and hash it at once: each piece is hashed on this thread while
 * the next one is read by the I/O thread pool, so a 32 MiB table costs max(read, hash), not
 * their sum. Returns the bytes and the SHA-256 of all but the last 32 (for decodeCompactManifest).
 */
export async function readCompactFile(file: string): Promise<{ data: Buffer; bodySha256: Buffer }> {
  const PIECE = 4 * 1024 * 1024;
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const data = Buffer.allocUnsafe(size);
    const hash = createHash('sha256');
    const bodyEnd = Math.max(0, size - TRAILER);
    const readAt = async (pos: number): Promise<number> => {
      const want = Math.min(PIECE, size - pos);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(data, pos + got, want - got, pos + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got;
    };
    let pos = 0;
    let pending = size > 0 ? readAt(0) : Promise.resolve(0);
    while (pos < size) {
      const got = await pending;
      if (got === 0) break; // the file shrank under us: the length check will say so
      const next = pos + got;
      pending = next < size ? readAt(next) : Promise.resolve(0);
      hash.update(data.subarray(pos, Math.min(next, bodyEnd)));
      pos = next;
    }
    const whole = pos === size ? data : data.subarray(0, pos);
    return { data: whole, bodySha256: pos === size ? hash.digest() : createHash('sha256').update(whole.subarray(0, Math.max(0, pos - TRAILER))).digest() };
  } finally {
    await fh.close();
  }
}
