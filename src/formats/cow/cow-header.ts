/**
 * UML COW headers ("OOOM", magic 0x4f4f4f4d): detect, decode, validate and encode every
 * layout by explicit byte offsets (docs/cow-format.md#detection and the layout sections).
 * Pure: no I/O.
 *
 * Layouts (offsets in bytes; BE unless noted):
 *
 *   v1 (host order = LE on x86; sizeof 280)       v2 (sizeof 4120)
 *     [  0..  3] magic                              [   0..   3] magic
 *     [  4..  7] version = 1                        [   4..   7] version = 2
 *     [  8..263] backing_file[256]                  [   8..4103] backing_file[4096]
 *     [264..267] mtime u32 (LE)                     [4104..4107] mtime u32
 *     [268..275] size u64 (LE)                      [4108..4115] size u64
 *     [276..279] sectorsize s32 (LE)                [4116..4119] sectorsize s32
 *
 *   v3 (packed; sizeof 4128)                      v3 "broken" (x86_64 unpacked; sizeof 4136)
 *     [  0..  3] magic                              [ 0.. 3] magic   [ 4.. 7] version = 3
 *     [  4..  7] version = 3                        [ 8..11] mtime u32 [12..15] padding (garbage)
 *     [  8.. 11] mtime u32                          [16..23] size u64  [24..27] sectorsize
 *     [ 12.. 19] size u64                           [28..31] alignment [32..35] cow_format (= 0)
 *     [ 20.. 23] sectorsize                         [36..4131] backing_file[4096]
 *     [ 24.. 27] alignment
 *     [ 28.. 31] cow_format (0, ignored)
 *     [ 32..4127] backing_file[4096]
 *
 *   QEMU block/cow.c, version 2 too (unpacked struct, path[1024]):
 *     i386:   [8..1031] path, [1032] mtime i32, [1036] size u64, [1044] sectorsize; sizeof 1048
 *     x86_64: [8..1031] path, [1032] mtime i32, [1036] pad, [1040] size u64, [1048] sectorsize; sizeof 1056
 *
 * Detection follows the kernel's read_cow_header: the magic read in host (LE) order
 * selects host-order fields for v1; a BE magic reads the version BE; version 2 fields are
 * BE; version 3 is packed unless bytes 32..35 are all zero ("broken v3"). Version 2 is
 * shared by UML v2 and QEMU's layouts: detectCowLayout returns all three candidates and
 * the opener picks the one that validates against the backing file (docs/cow-format.md#c1).
 *
 * Garbage after the path's NUL, in padding and in cow_format is ignored (docs/cow-format.md#c6).
 */

export const COW_MAGIC = 0x4f4f4f4d;
/** The only sector size the kernel really uses for bits and offsets (docs/cow-format.md#c8). */
export const COW_SECTOR_SIZE = 512;
/** The largest header variant (broken v3); the kernel reads this much. */
export const COW_MAX_HEADER_SIZE = 4136;

export type CowLayoutName = 'v1' | 'v2' | 'v3' | 'v3-broken' | 'qemu-i386' | 'qemu-x86_64';
export const COW_LAYOUTS: readonly CowLayoutName[] = ['v1', 'v2', 'v3', 'v3-broken', 'qemu-i386', 'qemu-x86_64'];

export interface CowHeader {
  readonly layout: CowLayoutName;
  readonly version: 1 | 2 | 3;
  /** Backing file path exactly as stored (up to the first NUL). */
  readonly backingFile: string;
  /** Header mtime: u32 for UML layouts, signed i32 for QEMU layouts. */
  readonly mtime: number;
  /** Backing file size in bytes (virtual size = roundup(size, 512)). */
  readonly size: number;
  readonly sectorSize: number;
  /** v3: the header field; v1/v2: the sector size (UML rounds with it); QEMU: 512. */
  readonly alignment: number;
  /** Bytes occupied by this layout's header struct. */
  readonly headerSize: number;
}

/** Field offsets per layout (written out, never derived from a struct's shape). */
interface FieldMap {
  readonly headerSize: number;
  readonly le: boolean;
  readonly path: number;
  readonly pathLength: number;
  readonly mtime: number;
  readonly mtimeSigned: boolean;
  readonly size: number;
  readonly sectorSize: number;
  readonly alignment?: number;
  readonly version: 1 | 2 | 3;
}

const FIELDS: Readonly<Record<CowLayoutName, FieldMap>> = {
  v1: { version: 1, headerSize: 280, le: true, path: 8, pathLength: 256, mtime: 264, mtimeSigned: false, size: 268, sectorSize: 276 },
  v2: { version: 2, headerSize: 4120, le: false, path: 8, pathLength: 4096, mtime: 4104, mtimeSigned: false, size: 4108, sectorSize: 4116 },
  v3: { version: 3, headerSize: 4128, le: false, path: 32, pathLength: 4096, mtime: 8, mtimeSigned: false, size: 12, sectorSize: 20, alignment: 24 },
  'v3-broken': { version: 3, headerSize: 4136, le: false, path: 36, pathLength: 4096, mtime: 8, mtimeSigned: false, size: 16, sectorSize: 24, alignment: 28 },
  'qemu-i386': { version: 2, headerSize: 1048, le: false, path: 8, pathLength: 1024, mtime: 1032, mtimeSigned: true, size: 1036, sectorSize: 1044 },
  'qemu-x86_64': { version: 2, headerSize: 1056, le: false, path: 8, pathLength: 1024, mtime: 1032, mtimeSigned: true, size: 1040, sectorSize: 1048 },
};

/** Where a layout keeps the backing path (check looks for garbage after its NUL). */
export function cowPathField(layout: CowLayoutName): { readonly offset: number; readonly length: number } {
  const f = FIELDS[layout];
  return { offset: f.path, length: f.pathLength };
}

/** Where a UML layout keeps the u32 mtime (undefined for QEMU layouts, which never check it). */
export function cowMtimeField(layout: CowLayoutName): { readonly offset: number; readonly le: boolean } | undefined {
  if (isQemuLayout(layout)) return undefined;
  const f = FIELDS[layout];
  return { offset: f.mtime, le: f.le };
}

/** A header that cannot be used; the message names the field and its value. */
export class CowHeaderError extends Error {
  readonly code = 'COW_ERR_BAD_HEADER';
  constructor(message: string) {
    super(message);
    this.name = 'CowHeaderError';
  }
}

export function isCowLayoutName(name: string): name is CowLayoutName {
  return (COW_LAYOUTS as readonly string[]).includes(name);
}

export function isQemuLayout(layout: CowLayoutName): boolean {
  return layout === 'qemu-i386' || layout === 'qemu-x86_64';
}

/**
 * The kernel's detection (docs/cow-format.md#detection). Returns one layout, or the three version-2 candidates
 * that only the backing file can tell apart.
 */
export function detectCowLayout(head: Buffer): CowLayoutName[] {
  if (head.length < 8) throw new CowHeaderError(`short header: ${head.length} bytes (need at least 8)`);
  let version: number;
  if (head.readUInt32LE(0) === COW_MAGIC) version = head.readUInt32LE(4);
  else if (head.readUInt32BE(0) === COW_MAGIC) version = head.readUInt32BE(4);
  else throw new CowHeaderError(`magic 0x${head.readUInt32BE(0).toString(16).padStart(8, '0')} is not a COW magic (expected "OOOM" or "MOOO")`);
  switch (version) {
    case 1:
      return ['v1'];
    case 2:
      return ['v2', 'qemu-i386', 'qemu-x86_64'];
    case 3:
      if (head.length < 36) throw new CowHeaderError(`short header: ${head.length} bytes for version 3`);
      // The kernel's own test: packed v3 has the path at 32, broken v3 has cow_format (0) there.
      return head.readUInt32BE(32) === 0 ? ['v3-broken'] : ['v3'];
    default:
      throw new CowHeaderError(`version ${version} unsupported (known: 1, 2, 3)`);
  }
}

/** Decode and validate `head` as `layout` (the caller chose it by detection or override). */
export function decodeCowHeader(head: Buffer, layout: CowLayoutName): CowHeader {
  const f = FIELDS[layout];
  if (head.length < f.headerSize) {
    throw new CowHeaderError(`short header: ${head.length} bytes, layout ${layout} needs ${f.headerSize}`);
  }
  const magicLE = head.readUInt32LE(0) === COW_MAGIC;
  if (!magicLE && head.readUInt32BE(0) !== COW_MAGIC) {
    throw new CowHeaderError(`magic 0x${head.readUInt32BE(0).toString(16).padStart(8, '0')} is not a COW magic`);
  }
  // The version is read in the magic's byte order (kernel), whatever the layout's fields use.
  const version = magicLE ? head.readUInt32LE(4) : head.readUInt32BE(4);
  if (version !== f.version) throw new CowHeaderError(`version ${version} does not match layout ${layout} (version ${f.version})`);
  if (isQemuLayout(layout) && magicLE) throw new CowHeaderError(`layout ${layout}: magic must be big-endian`);

  const u32 = (o: number): number => (f.le ? head.readUInt32LE(o) : head.readUInt32BE(o));
  const i32 = (o: number): number => (f.le ? head.readInt32LE(o) : head.readInt32BE(o));
  const sizeBig = f.le ? head.readBigUInt64LE(f.size) : head.readBigUInt64BE(f.size);
  if (sizeBig > BigInt(Number.MAX_SAFE_INTEGER) - 4096n) throw new CowHeaderError(`size ${sizeBig} too large (limit 2^53)`);
  const size = Number(sizeBig);
  const sectorSize = i32(f.sectorSize);
  if (sectorSize !== COW_SECTOR_SIZE) throw new CowHeaderError(`sectorsize ${sectorSize} unsupported (only 512 is accepted)`);
  let alignment = sectorSize;
  if (f.alignment !== undefined) {
    alignment = u32(f.alignment);
    if (alignment === 0) throw new CowHeaderError('alignment 0 (invalid COW header, align == 0)');
    if ((alignment & (alignment - 1)) !== 0 || alignment > 1 << 24) {
      throw new CowHeaderError(`alignment ${alignment} unsupported (must be a power of two <= 16 MiB)`);
    }
  }
  return Object.freeze({
    layout,
    version: f.version,
    backingFile: decodePath(head, f.path, f.pathLength, layout),
    mtime: f.mtimeSigned ? i32(f.mtime) : u32(f.mtime),
    size,
    sectorSize,
    alignment,
    headerSize: f.headerSize,
  });
}

function decodePath(head: Buffer, offset: number, length: number, layout: CowLayoutName): string {
  const field = head.subarray(offset, offset + length);
  const nul = field.indexOf(0);
  if (nul < 0) throw new CowHeaderError(`backing_file is not NUL-terminated within its ${length} bytes (layout ${layout})`);
  return field.toString('utf8', 0, nul);
}

/**
 * Serialize a header in any layout; every byte not owned by a field is zero (docs/cow-format.md#c6). Used
 * by createCow (v3) and by tools that rewrite a header in its own layout (docs/cow-format.md#c4).
 */
export function encodeCowHeader(h: Omit<CowHeader, 'headerSize' | 'version'>): Buffer {
  const f = FIELDS[h.layout];
  const buf = Buffer.alloc(f.headerSize);
  // v1 is host order; we write it as an x86 (LE) host did, so the file reads "MOOO".
  if (f.le) {
    buf.writeUInt32LE(COW_MAGIC, 0);
    buf.writeUInt32LE(f.version, 4);
  } else {
    buf.writeUInt32BE(COW_MAGIC, 0);
    buf.writeUInt32BE(f.version, 4);
  }
  const path = Buffer.from(h.backingFile, 'utf8');
  if (path.length === 0) throw new CowHeaderError('empty backing_file (a v3 header with an empty path is mis-detected as broken v3)');
  if (path.length >= f.pathLength) throw new CowHeaderError(`backing_file is ${path.length} bytes; layout ${h.layout} allows ${f.pathLength - 1}`);
  if (path.includes(0)) throw new CowHeaderError('backing_file contains a NUL byte');
  path.copy(buf, f.path);
  if (f.mtimeSigned) {
    buf.writeInt32BE(h.mtime, f.mtime);
  } else if (f.le) {
    buf.writeUInt32LE(h.mtime, f.mtime);
  } else {
    buf.writeUInt32BE(h.mtime, f.mtime);
  }
  if (f.le) buf.writeBigUInt64LE(BigInt(h.size), f.size);
  else buf.writeBigUInt64BE(BigInt(h.size), f.size);
  if (f.le) buf.writeInt32LE(h.sectorSize, f.sectorSize);
  else buf.writeInt32BE(h.sectorSize, f.sectorSize);
  if (f.alignment !== undefined) buf.writeUInt32BE(h.alignment, f.alignment);
  // cow_format (v3 offset 28 / broken 32) stays 0 = COW_BITMAP.
  return buf;
}
