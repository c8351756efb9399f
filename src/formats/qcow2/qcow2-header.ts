/**
 * The qcow2 header and its extensions, decoded and validated (pure: bytes in, facts out).
 * Every field cownbd relies on is checked here, once, so the reader (qcow2-device.ts)
 * can trust offsets and sizes. docs/qcow2-format.md has the layout and the reasons.
 *
 * Refused, with one line naming the field and value: versions other than 2 and 3,
 * encryption (crypt_method != 0), an external data file (incompatible bit 2), the corrupt
 * bit (bit 1), incompatible bits cownbd does not know, a compression type other than
 * zlib/zstd, cluster sizes outside 512 B – 2 MiB, an L1 table too small for the disk.
 * Accepted: the dirty bit (bit 0, lazy refcounts): only refcounts may be stale and a
 * reader never uses refcounts (docs/qcow2-format.md, "Dirty images").
 */

/** "QFI\xfb" as a big-endian u32. */
export const QCOW2_MAGIC = 0x514649fb;

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/** Header extension types (docs/qcow2-format.md, "Header extensions"). */
const EXT_END = 0x00000000;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_NAMES = 0x6803f857;
const EXT_DATA_FILE = 0x44415441;

export const MIN_CLUSTER_BITS = 9;
/** QEMU cannot open (or make) clusters above 2 MiB; neither do we. */
export const MAX_CLUSTER_BITS = 21;
/** Extended L2 entries need 32 subclusters of at least 512 bytes. */
export const MIN_EXTL2_CLUSTER_BITS = 14;
/** Longest backing file name the format allows. */
export const MAX_BACKING_NAME = 1023;
/** QEMU's limit on the active L1 table (32 MiB): a larger one is a crafted file. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
/** Byte offsets past 2^53 cannot be represented exactly by a JS number: refuse them. */
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

export type CompressionType = 'zlib' | 'zstd';

export interface Qcow2Header {
  readonly version: 2 | 3;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly size: number;
  readonly l1Size: number;
  readonly l1TableOffset: number;
  readonly refcountTableOffset: number;
  readonly refcountTableClusters: number;
  readonly refcountOrder: number;
  readonly nbSnapshots: number;
  readonly snapshotsOffset: number;
  readonly headerLength: number;
  readonly incompatible: bigint;
  readonly compatible: bigint;
  readonly autoclear: bigint;
  readonly dirty: boolean;
  readonly extendedL2: boolean;
  readonly compression: CompressionType;
  /** Backing file name as stored (undefined: no backing file). */
  readonly backingName: string | undefined;
  /** Backing format from the header extension (undefined: not recorded). */
  readonly backingFormat: string | undefined;
  /** Bytes per L2 entry: 8, or 16 with extended L2 entries. */
  readonly l2EntrySize: number;
  /** Entries per L2 table (one cluster). */
  readonly l2Entries: number;
}

export class Qcow2HeaderError extends Error {
  readonly code = 'EINVAL';
}

/** Bytes to read for the header: the fixed part and extensions live in the first cluster. */
export function headerReadLength(fileLength: number): number {
  return Math.min(fileLength, 1 << MAX_CLUSTER_BITS);
}

/** Does `head` start with the qcow2 magic? (For probing by whoever owns probing.) */
export function isQcow2Magic(head: Buffer): boolean {
  return head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC;
}

function safe(field: string, v: bigint): number {
  if (v > MAX_SAFE) throw new Qcow2HeaderError(`${field} ${v} is too large`);
  return Number(v);
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/** Names of incompatible feature bits the image's feature-name table gives (for messages). */
function featureName(names: Map<number, string>, bit: number): string {
  const n = names.get(bit);
  return n ? ` ("${n}")` : '';
}

/**
 * Decode and validate the header in `buf` (the file's first bytes: at least the first
 * cluster, or the whole file if shorter). `fileLength` bounds the tables.
 */
export function parseQcow2Header(buf: Buffer, fileLength: number): Qcow2Header {
  if (buf.length < 72) throw new Qcow2HeaderError(`file too short for a qcow2 header: ${buf.length} bytes`);
  const magic = buf.readUInt32BE(0);
  if (magic !== QCOW2_MAGIC) throw new Qcow2HeaderError(`magic 0x${magic.toString(16)} is not qcow2 (0x514649fb, "QFI\\xfb")`);
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new Qcow2HeaderError(`version ${version} is not supported (2 or 3)`);
  const clusterBits = buf.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new Qcow2HeaderError(`cluster_bits ${clusterBits} is out of range (${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}: 512 B to 2 MiB clusters)`);
  }
  const clusterSize = 1 << clusterBits;
  const cryptMethod = buf.readUInt32BE(32);
  if (cryptMethod !== 0) {
    const how = cryptMethod === 1 ? 'AES' : cryptMethod === 2 ? 'LUKS' : 'unknown';
    throw new Qcow2HeaderError(`crypt_method ${cryptMethod} (${how}): encrypted qcow2 images are not supported (decrypt with qemu-img convert first)`);
  }
  const v3 = version === 3 ? parseV3Fields(buf, clusterSize) : V2_FIELDS;
  const backingOffset = buf.readBigUInt64BE(8);
  const ext = parseExtensions(buf, v3.headerLength, clusterSize, backingOffset);
  const extendedL2 = checkFeatures(v3.incompatible, ext, clusterBits);
  const l2EntrySize = extendedL2 ? 16 : 8;
  const tables = checkTables(buf, clusterSize, clusterSize / l2EntrySize, fileLength);
  const backingName = backingNameOf(buf, backingOffset, clusterSize);
  return {
    version,
    clusterBits,
    clusterSize,
    ...tables,
    refcountTableClusters: buf.readUInt32BE(56),
    ...v3,
    dirty: (v3.incompatible & INCOMPAT_DIRTY) !== 0n,
    extendedL2,
    backingName,
    backingFormat: backingName !== undefined ? ext.backingFormat : undefined,
    l2EntrySize,
    l2Entries: clusterSize / l2EntrySize,
  };
}

interface V3Fields {
  readonly incompatible: bigint;
  readonly compatible: bigint;
  readonly autoclear: bigint;
  readonly refcountOrder: number;
  readonly headerLength: number;
  readonly compression: CompressionType;
}

/** What a version 2 header means by the fields it lacks. */
const V2_FIELDS: V3Fields = { incompatible: 0n, compatible: 0n, autoclear: 0n, refcountOrder: 4, headerLength: 72, compression: 'zlib' };

/** Bytes 72..104 and the optional compression_type of a version 3 header. */
function parseV3Fields(buf: Buffer, clusterSize: number): V3Fields {
  if (buf.length < 104) throw new Qcow2HeaderError(`file too short for a version 3 header: ${buf.length} bytes`);
  const incompatible = buf.readBigUInt64BE(72);
  const refcountOrder = buf.readUInt32BE(96);
  const headerLength = buf.readUInt32BE(100);
  if (headerLength < 104 || headerLength % 8 !== 0) throw new Qcow2HeaderError(`header_length ${headerLength} is invalid (at least 104, a multiple of 8)`);
  if (headerLength > clusterSize || headerLength > buf.length) throw new Qcow2HeaderError(`header_length ${headerLength} does not fit in the first cluster (${clusterSize} bytes)`);
  if (refcountOrder > 6) throw new Qcow2HeaderError(`refcount_order ${refcountOrder} is out of range (0..6)`);
  let compression: CompressionType = 'zlib';
  // compression_type is present only when header_length covers byte 104.
  if (headerLength > 104) {
    const type = buf[104]!;
    if (type === 1) compression = 'zstd';
    else if (type !== 0) throw new Qcow2HeaderError(`compression_type ${type} is not supported (0 zlib, 1 zstd)`);
  }
  const bit3 = (incompatible & INCOMPAT_COMPRESSION) !== 0n;
  if (bit3 && compression === 'zlib') throw new Qcow2HeaderError('incompatible feature bit 3 (compression type) is set but compression_type is 0 (zlib)');
  if (!bit3 && compression !== 'zlib') throw new Qcow2HeaderError(`compression_type ${compression} is set without incompatible feature bit 3`);
  return { incompatible, compatible: buf.readBigUInt64BE(80), autoclear: buf.readBigUInt64BE(88), refcountOrder, headerLength, compression };
}

/** Refuse the incompatible features a reader cannot honour; true when L2 entries are extended. */
function checkFeatures(incompatible: bigint, ext: Extensions, clusterBits: number): boolean {
  if ((incompatible & INCOMPAT_CORRUPT) !== 0n) {
    throw new Qcow2HeaderError('incompatible feature bit 1 (corrupt) is set: the image may be damaged; repair it with qemu-img check -r all first');
  }
  if ((incompatible & INCOMPAT_DATA_FILE) !== 0n || ext.dataFile !== undefined) {
    const name = ext.dataFile !== undefined ? ` "${ext.dataFile}"` : '';
    throw new Qcow2HeaderError(`incompatible feature bit 2 (external data file${name}) is set: qcow2 images with an external data file are not supported`);
  }
  const unknown = incompatible & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const bits: string[] = [];
    for (let b = 0; b < 64; b++) if ((unknown >> BigInt(b)) & 1n) bits.push(`${b}${featureName(ext.featureNames, b)}`);
    throw new Qcow2HeaderError(`incompatible_features ${hex(incompatible)} has bits cownbd does not know: ${bits.join(', ')}`);
  }
  const extendedL2 = (incompatible & INCOMPAT_EXTL2) !== 0n;
  if (extendedL2 && clusterBits < MIN_EXTL2_CLUSTER_BITS) {
    throw new Qcow2HeaderError(`cluster_bits ${clusterBits} is too small for extended L2 entries (at least ${MIN_EXTL2_CLUSTER_BITS}: 16 KiB clusters)`);
  }
  return extendedL2;
}

/** The virtual size and the table offsets, each checked against the cluster size and the file. */
function checkTables(buf: Buffer, clusterSize: number, l2Entries: number, fileLength: number) {
  const size = safe('size', buf.readBigUInt64BE(24));
  const l1Size = buf.readUInt32BE(36);
  // Every guest cluster must have an L1 entry; QEMU refuses a shorter table too.
  const needL1 = Math.ceil(Math.ceil(size / clusterSize) / l2Entries);
  if (l1Size < needL1) throw new Qcow2HeaderError(`l1_size ${l1Size} is too small for size ${size} (needs ${needL1} entries)`);
  if (l1Size * 8 > MAX_L1_BYTES) throw new Qcow2HeaderError(`l1_size ${l1Size} is too large (at most ${MAX_L1_BYTES / 8} entries)`);
  const l1TableOffset = safe('l1_table_offset', buf.readBigUInt64BE(40));
  if (l1Size > 0) {
    if (l1TableOffset % clusterSize !== 0) throw new Qcow2HeaderError(`l1_table_offset ${l1TableOffset} is not aligned to the cluster size ${clusterSize}`);
    if (l1TableOffset === 0) throw new Qcow2HeaderError('l1_table_offset 0 overlaps the header');
    if (l1TableOffset + l1Size * 8 > fileLength) throw new Qcow2HeaderError(`l1_table_offset ${l1TableOffset} + ${l1Size} entries lies past the end of the file (${fileLength} bytes)`);
  }
  const refcountTableOffset = safe('refcount_table_offset', buf.readBigUInt64BE(48));
  if (refcountTableOffset % clusterSize !== 0) throw new Qcow2HeaderError(`refcount_table_offset ${refcountTableOffset} is not aligned to the cluster size ${clusterSize}`);
  const nbSnapshots = buf.readUInt32BE(60);
  const snapshotsOffset = safe('snapshots_offset', buf.readBigUInt64BE(64));
  if (nbSnapshots > 0 && snapshotsOffset % clusterSize !== 0) throw new Qcow2HeaderError(`snapshots_offset ${snapshotsOffset} is not aligned to the cluster size ${clusterSize}`);
  return { size, l1Size, l1TableOffset, refcountTableOffset, nbSnapshots, snapshotsOffset };
}

/** The backing file name (bytes 8..19 locate it inside the first cluster), if any. */
function backingNameOf(buf: Buffer, backingOffset: bigint, clusterSize: number): string | undefined {
  if (backingOffset === 0n) return undefined;
  const at = safe('backing_file_offset', backingOffset);
  const length = buf.readUInt32BE(16);
  if (length === 0) throw new Qcow2HeaderError(`backing_file_size 0 with backing_file_offset ${at}`);
  if (length > MAX_BACKING_NAME) throw new Qcow2HeaderError(`backing_file_size ${length} is too long (at most ${MAX_BACKING_NAME})`);
  if (at + length > clusterSize || at + length > buf.length) {
    throw new Qcow2HeaderError(`backing_file_offset ${at} + backing_file_size ${length} lies outside the first cluster (${clusterSize} bytes)`);
  }
  const name = buf.toString('utf8', at, at + length);
  if (name.includes('\0')) throw new Qcow2HeaderError(`backing file name ${JSON.stringify(name)} contains a NUL byte`);
  return name;
}

interface Extensions {
  backingFormat?: string;
  dataFile?: string;
  featureNames: Map<number, string>;
}

/**
 * Walk the header extensions (type, length, data padded to 8) up to the end marker. They
 * sit between header_length and the backing file name (or the end of the first cluster).
 */
function parseExtensions(buf: Buffer, headerLength: number, clusterSize: number, backingOffset: bigint): Extensions {
  const out: Extensions = { featureNames: new Map() };
  const limit = Math.min(buf.length, clusterSize, backingOffset !== 0n && backingOffset < BigInt(clusterSize) ? Number(backingOffset) : clusterSize);
  let at = headerLength;
  while (at + 8 <= limit) {
    const type = buf.readUInt32BE(at);
    const len = buf.readUInt32BE(at + 4);
    if (type === EXT_END) return out;
    const data = at + 8;
    if (data + len > limit) throw new Qcow2HeaderError(`header extension 0x${type.toString(16)} at byte ${at} (length ${len}) runs past the header area (${limit} bytes)`);
    const text = (): string => buf.toString('utf8', data, data + len);
    if (type === EXT_BACKING_FORMAT) out.backingFormat = text();
    else if (type === EXT_DATA_FILE) out.dataFile = text();
    else if (type === EXT_FEATURE_NAMES) {
      for (let e = data; e + 48 <= data + len; e += 48) {
        if (buf[e] !== 0) continue; // only incompatible features matter for messages
        const name = buf.toString('utf8', e + 2, e + 48).replace(/\0.*$/s, '');
        out.featureNames.set(buf[e + 1]!, name);
      }
    }
    at = data + Math.ceil(len / 8) * 8;
  }
  // Version 2 images may have no end marker before the backing name; that is fine.
  return out;
}
