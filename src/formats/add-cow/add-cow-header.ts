/**
 * add-cow header: parse, validate and serialize, by explicit little-endian offsets.
 *
 * Source: the final (V19/V20) spec and code of QEMU's add-cow proposal, with the code's
 * stricter checks: docs/add-cow-format.md#header and docs/add-cow-format.md#a1.
 *
 *   .add-cow file:  [ header: HEADER_SIZE bytes ][ COW bitmap: 1 bit per cluster, LSB first ]
 *
 *   [ 0 ..  3] magic                 "ACOW" (41 43 4f 57)
 *   [ 4 ..  7] backing name offset   u32 LE; 0 = no backing file; else in [76, HEADER_SIZE-2]
 *   [ 8 .. 11] backing name size     u32 LE; 0 iff offset 0; < HEADER_SIZE-76; offset+size <= HEADER_SIZE
 *   [12 .. 15] image name offset     u32 LE; mandatory; in [76, HEADER_SIZE-2]
 *   [16 .. 19] image name size       u32 LE; > 0; < HEADER_SIZE-76; offset+size <= HEADER_SIZE
 *   [20 .. 23] cluster_bits          u32 LE; 12..21 (4 KiB .. 2 MiB)
 *   [24 .. 31] features              u64 LE; incompatible; none defined → must be 0
 *   [32 .. 39] compat features       u64 LE; bit 0 = ALL_ALLOCATED; unknown bits ignored (kept)
 *   [40 .. 43] header size           u32 LE; must equal max(cluster_size, 4096)
 *   [44 .. 59] backing file format   16 B ASCII, NUL-terminated (<= 15 chars), zero-padded;
 *                                    all zero when there is no backing file
 *   [60 .. 75] image file format     16 B ASCII, NUL-terminated, zero-padded, non-empty
 *   [76 .. HEADER_SIZE-1]            name area: the two names (NOT NUL-terminated); every
 *                                    other byte must be 0
 *
 * Interpretations (docs/add-cow-format.md#a3 … docs/add-cow-format.md#a6):
 *   - Format strings: V19+ writes them NUL-terminated (<= 15 chars); a V18-style 16-char
 *     string without NUL is accepted on read, never written. Characters must be printable
 *     ASCII and the bytes after the NUL must be zero.
 *   - Non-zero bytes in the name area outside both names are REFUSED (not warned): the spec
 *     says they "must be 0", a compliant creator never writes them, and a stray byte is the
 *     cheapest sign of a corrupted or foreign header. Overlapping names are tolerated.
 *   - Names are decoded as UTF-8 and must not contain NUL bytes.
 *   - Unknown compatible bits are kept in `compatFeatures` so a header rewrite (finalize)
 *     preserves them.
 *
 * Every refusal is an AddCowHeaderError naming the field and the offending value.
 */

export const ADD_COW_MAGIC = Buffer.from('ACOW', 'latin1');
/** Size of the fixed part; the name area starts here. */
export const ADD_COW_FIXED_SIZE = 76;
export const ADD_COW_MIN_CLUSTER_BITS = 12;
export const ADD_COW_MAX_CLUSTER_BITS = 21;
export const ADD_COW_DEFAULT_CLUSTER_BITS = 16;
export const ADD_COW_FORMAT_FIELD_SIZE = 16;
/** Compatible feature bit 0: every cluster lives in the image file; bitmap and backing ignored. */
export const ADD_COW_COMPAT_ALL_ALLOCATED = 1n;

/** Field offsets, named as in the spec table. */
export const AddCowOffset = {
  magic: 0,
  backingNameOffset: 4,
  backingNameSize: 8,
  imageNameOffset: 12,
  imageNameSize: 16,
  clusterBits: 20,
  features: 24,
  compatFeatures: 32,
  headerSize: 40,
  backingFormat: 44,
  imageFormat: 60,
} as const;

export class AddCowHeaderError extends Error {
  readonly code = 'ADDCOW_ERR_BAD_HEADER';
  constructor(message: string) {
    super(message);
    this.name = 'AddCowHeaderError';
  }
}

export interface AddCowHeader {
  readonly backingNameOffset: number;
  readonly backingNameSize: number;
  readonly imageNameOffset: number;
  readonly imageNameSize: number;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly features: bigint;
  readonly compatFeatures: bigint;
  readonly headerSize: number;
  /** Backing file name exactly as stored (may be relative); undefined = no backing file. */
  readonly backingName: string | undefined;
  /** '' when there is no backing file. */
  readonly backingFormat: string;
  readonly imageName: string;
  readonly imageFormat: string;
  readonly allAllocated: boolean;
}

/** HEADER_SIZE for a cluster size: the final code requires exactly max(cluster, 4096). */
export function addCowHeaderSize(clusterBits: number): number {
  return Math.max(2 ** clusterBits, 4096);
}

/** Number of clusters covering `virtualSize` bytes. */
export function addCowClusterCount(virtualSize: number, clusterBits: number): number {
  return Math.ceil(virtualSize / 2 ** clusterBits);
}

/** Bitmap length in bytes: ceil(clusters / 8) (= ceil(total_sectors / (cluster_sectors*8))). */
export function addCowBitmapLength(virtualSize: number, clusterBits: number): number {
  return Math.ceil(addCowClusterCount(virtualSize, clusterBits) / 8);
}

/** Length the creator truncates the .add-cow file to: HEADER_SIZE + roundup(bitmap, cluster). */
export function addCowMetadataLength(virtualSize: number, clusterBits: number): number {
  const cluster = 2 ** clusterBits;
  const bitmap = addCowBitmapLength(virtualSize, clusterBits);
  return addCowHeaderSize(clusterBits) + Math.ceil(bitmap / cluster) * cluster;
}

/**
 * Validate the fixed part far enough to know HEADER_SIZE (magic, cluster_bits, header
 * size). The caller then reads HEADER_SIZE bytes and calls parseAddCowHeader.
 */
export function peekAddCowHeaderSize(fixed: Buffer): number {
  if (fixed.length < ADD_COW_FIXED_SIZE) {
    throw new AddCowHeaderError(`file too short for an add-cow header: ${fixed.length} bytes, need at least ${ADD_COW_FIXED_SIZE}`);
  }
  checkMagic(fixed);
  const clusterBits = checkClusterBits(fixed.readUInt32LE(AddCowOffset.clusterBits));
  return checkHeaderSize(fixed.readUInt32LE(AddCowOffset.headerSize), clusterBits);
}

/** Parse and validate a complete header (at least HEADER_SIZE bytes). Returns a frozen object. */
export function parseAddCowHeader(buf: Buffer): AddCowHeader {
  const headerSize = peekAddCowHeaderSize(buf);
  if (buf.length < headerSize) {
    throw new AddCowHeaderError(`file too short: header size is ${headerSize} bytes but only ${buf.length} are present`);
  }
  const clusterBits = buf.readUInt32LE(AddCowOffset.clusterBits);
  const features = buf.readBigUInt64LE(AddCowOffset.features);
  if (features !== 0n) {
    throw new AddCowHeaderError(`unsupported incompatible features 0x${features.toString(16)} (bits ${setBits(features).join(', ')}); none are defined`);
  }
  const compatFeatures = buf.readBigUInt64LE(AddCowOffset.compatFeatures);

  const backing = checkNameField(buf, 'backing file name', AddCowOffset.backingNameOffset, headerSize, true);
  const image = checkNameField(buf, 'image file name', AddCowOffset.imageNameOffset, headerSize, false)!;

  const backingFormat = decodeFormat(buf, AddCowOffset.backingFormat, 'backing file format');
  const imageFormat = decodeFormat(buf, AddCowOffset.imageFormat, 'image file format');
  if (imageFormat === '') throw new AddCowHeaderError('image file format (bytes 60..75) is empty; it is mandatory');
  if (!backing && backingFormat !== '') {
    throw new AddCowHeaderError(`backing file format is "${backingFormat}" but there is no backing file; the field must be all zero`);
  }
  checkNameAreaZero(buf, headerSize, [backing, image]);

  return Object.freeze({
    backingNameOffset: backing?.offset ?? 0,
    backingNameSize: backing?.size ?? 0,
    imageNameOffset: image.offset,
    imageNameSize: image.size,
    clusterBits,
    clusterSize: 2 ** clusterBits,
    features,
    compatFeatures,
    headerSize,
    backingName: backing?.name,
    backingFormat,
    imageName: image.name,
    imageFormat,
    allAllocated: (compatFeatures & ADD_COW_COMPAT_ALL_ALLOCATED) !== 0n,
  });
}

export interface AddCowHeaderFields {
  clusterBits: number;
  imageName: string;
  imageFormat: string;
  backingName?: string | undefined;
  backingFormat?: string | undefined;
  compatFeatures?: bigint;
}

/**
 * Serialize a header of HEADER_SIZE bytes (names at 76, backing first, as the reference
 * creator does). Validates its inputs with the same rules as the parser.
 */
export function encodeAddCowHeader(fields: AddCowHeaderFields): Buffer {
  const clusterBits = checkClusterBits(fields.clusterBits);
  const headerSize = addCowHeaderSize(clusterBits);
  const backingName = fields.backingName === undefined ? undefined : Buffer.from(fields.backingName, 'utf8');
  const imageName = Buffer.from(fields.imageName, 'utf8');
  if (backingName && backingName.length === 0) throw new AddCowHeaderError('backing file name is empty');
  if (imageName.length === 0) throw new AddCowHeaderError('image file name is empty');
  for (const [label, name] of [['backing file name', backingName], ['image file name', imageName]] as const) {
    if (name?.includes(0)) throw new AddCowHeaderError(`${label} contains a NUL byte`);
  }
  const room = headerSize - ADD_COW_FIXED_SIZE;
  const total = (backingName?.length ?? 0) + imageName.length;
  if (total >= room) {
    throw new AddCowHeaderError(`file names are too long: ${total} bytes, the header (${headerSize} bytes) has room for ${room - 1}`);
  }
  if (!backingName && fields.backingFormat) {
    throw new AddCowHeaderError(`backing file format "${fields.backingFormat}" given without a backing file`);
  }
  if (fields.imageFormat === '') throw new AddCowHeaderError('image file format is empty');

  const buf = Buffer.alloc(headerSize);
  ADD_COW_MAGIC.copy(buf, AddCowOffset.magic);
  let nameOffset = ADD_COW_FIXED_SIZE;
  if (backingName) {
    buf.writeUInt32LE(nameOffset, AddCowOffset.backingNameOffset);
    buf.writeUInt32LE(backingName.length, AddCowOffset.backingNameSize);
    backingName.copy(buf, nameOffset);
    nameOffset += backingName.length;
  }
  buf.writeUInt32LE(nameOffset, AddCowOffset.imageNameOffset);
  buf.writeUInt32LE(imageName.length, AddCowOffset.imageNameSize);
  imageName.copy(buf, nameOffset);
  buf.writeUInt32LE(clusterBits, AddCowOffset.clusterBits);
  buf.writeBigUInt64LE(0n, AddCowOffset.features);
  buf.writeBigUInt64LE(fields.compatFeatures ?? 0n, AddCowOffset.compatFeatures);
  buf.writeUInt32LE(headerSize, AddCowOffset.headerSize);
  if (backingName) encodeFormat(buf, AddCowOffset.backingFormat, 'backing file format', fields.backingFormat ?? 'raw');
  encodeFormat(buf, AddCowOffset.imageFormat, 'image file format', fields.imageFormat);
  return buf;
}

// ---------------------------------------------------------------------------------------

function checkMagic(buf: Buffer): void {
  if (!buf.subarray(0, 4).equals(ADD_COW_MAGIC)) {
    throw new AddCowHeaderError(`bad magic ${buf.subarray(0, 4).toString('hex')} (bytes 0..3), expected 41434f57 ("ACOW")`);
  }
}

function checkClusterBits(bits: number): number {
  if (!Number.isInteger(bits) || bits < ADD_COW_MIN_CLUSTER_BITS || bits > ADD_COW_MAX_CLUSTER_BITS) {
    throw new AddCowHeaderError(
      `cluster_bits ${bits} out of range: must be ${ADD_COW_MIN_CLUSTER_BITS}..${ADD_COW_MAX_CLUSTER_BITS} (4 KiB .. 2 MiB clusters)`,
    );
  }
  return bits;
}

function checkHeaderSize(headerSize: number, clusterBits: number): number {
  const expected = addCowHeaderSize(clusterBits);
  if (headerSize !== expected) {
    throw new AddCowHeaderError(`header size ${headerSize} must equal max(cluster_size, 4096) = ${expected} (cluster_bits ${clusterBits})`);
  }
  return headerSize;
}

interface NameField {
  readonly offset: number;
  readonly size: number;
  readonly name: string;
}

/** Validate one (offset, size) pair at `fieldOffset`/`fieldOffset+4` and decode the name. */
function checkNameField(buf: Buffer, label: string, fieldOffset: number, headerSize: number, optional: boolean): NameField | undefined {
  const offset = buf.readUInt32LE(fieldOffset);
  const size = buf.readUInt32LE(fieldOffset + 4);
  if (offset === 0 && size === 0) {
    if (optional) return undefined;
    throw new AddCowHeaderError(`${label} offset is 0: the ${label} is mandatory`);
  }
  if (offset === 0 || size === 0) {
    throw new AddCowHeaderError(`${label} offset ${offset} and size ${size}: the size must be 0 if and only if the offset is 0`);
  }
  if (offset < ADD_COW_FIXED_SIZE || offset > headerSize - 2) {
    throw new AddCowHeaderError(`${label} offset ${offset} out of range: must be in [${ADD_COW_FIXED_SIZE}, ${headerSize - 2}]`);
  }
  if (size >= headerSize - ADD_COW_FIXED_SIZE) {
    throw new AddCowHeaderError(`${label} size ${size} too large: must be less than ${headerSize - ADD_COW_FIXED_SIZE}`);
  }
  if (offset + size > headerSize) {
    throw new AddCowHeaderError(`${label} offset ${offset} + size ${size} = ${offset + size} runs past the header size ${headerSize}`);
  }
  const raw = buf.subarray(offset, offset + size);
  if (raw.includes(0)) throw new AddCowHeaderError(`${label} (offset ${offset}, size ${size}) contains a NUL byte`);
  return { offset, size, name: raw.toString('utf8') };
}

/** 16-byte ASCII format name: NUL-terminated and zero-padded, or (V18) exactly 16 chars. */
function decodeFormat(buf: Buffer, offset: number, label: string): string {
  const field = buf.subarray(offset, offset + ADD_COW_FORMAT_FIELD_SIZE);
  const nul = field.indexOf(0);
  const text = nul === -1 ? field : field.subarray(0, nul);
  for (const byte of text) {
    if (byte < 0x21 || byte > 0x7e) {
      throw new AddCowHeaderError(`${label} (bytes ${offset}..${offset + 15}) holds non-printable byte 0x${byte.toString(16).padStart(2, '0')}`);
    }
  }
  if (nul !== -1) {
    const pad = field.subarray(nul).findIndex((b) => b !== 0);
    if (pad !== -1) {
      throw new AddCowHeaderError(`${label} (bytes ${offset}..${offset + 15}) has non-zero byte at offset ${offset + nul + pad} after its NUL terminator`);
    }
  }
  return text.toString('latin1');
}

function encodeFormat(buf: Buffer, offset: number, label: string, value: string): void {
  if (!/^[\x21-\x7e]{1,15}$/.test(value)) {
    throw new AddCowHeaderError(`${label} "${value}" must be 1..15 printable ASCII characters`);
  }
  buf.write(value, offset, 'latin1');
}

function checkNameAreaZero(buf: Buffer, headerSize: number, names: ReadonlyArray<NameField | undefined>): void {
  const ranges = names.filter((n): n is NameField => n !== undefined).sort((a, b) => a.offset - b.offset);
  let pos = ADD_COW_FIXED_SIZE;
  const checkGap = (end: number): void => {
    for (let i = pos; i < end; i++) {
      if (buf[i] !== 0) {
        throw new AddCowHeaderError(
          `name area byte at offset ${i} is 0x${buf[i]!.toString(16).padStart(2, '0')} outside both file names; it must be 0`,
        );
      }
    }
  };
  for (const r of ranges) {
    checkGap(r.offset);
    pos = Math.max(pos, r.offset + r.size);
  }
  checkGap(headerSize);
}

function setBits(value: bigint): number[] {
  const bits: number[] = [];
  for (let i = 0; i < 64; i++) if ((value >> BigInt(i)) & 1n) bits.push(i);
  return bits;
}
