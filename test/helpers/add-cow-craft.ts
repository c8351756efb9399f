/**
 * Test helper: an INDEPENDENT add-cow writer, byte by byte from the spec table
 * (docs/add-cow-format.md#header). It deliberately does not use src/formats/add-cow: every field is
 * placed with a DataView at its table offset, and any field can be overridden with a
 * wrong value to build invalid fixtures.
 *
 *   [0..3] "ACOW" [4..7] backing off [8..11] backing size [12..15] image off [16..19] image size
 *   [20..23] cluster_bits [24..31] features [32..39] compat [40..43] header size
 *   [44..59] backing fmt [60..75] image fmt [76..] names, then the bitmap at HEADER_SIZE
 */
import { writeFileSync } from 'node:fs';

export interface CraftOptions {
  clusterBits?: number;
  backingName?: string;
  imageName?: string;
  /** Raw 16-byte field contents (string is written as latin1, rest zero). */
  backingFormat?: string | Uint8Array;
  imageFormat?: string | Uint8Array;
  magic?: string;
  features?: bigint;
  compat?: bigint;
  headerSize?: number;
  /** Override the name offset/size fields after the names were placed. */
  backingOffset?: number;
  backingSize?: number;
  imageOffset?: number;
  imageSize?: number;
  /** Pokes applied last: [offset, byte]. */
  pokes?: Array<[number, number]>;
  /** Bitmap bytes placed at HEADER_SIZE (default none → zeros up to the file length). */
  bitmap?: Uint8Array;
  /** Virtual size used to size the file: HEADER_SIZE + roundup(ceil(clusters/8), cluster). */
  virtualSize?: number;
  /** Override the total file length. */
  fileLength?: number;
}

/** Build a complete .add-cow file image (header + bitmap) as bytes. */
export function craftAddCow(o: CraftOptions = {}): Buffer {
  const bits = o.clusterBits ?? 16;
  const cluster = 2 ** bits;
  const hsize = cluster > 4096 ? cluster : 4096;
  const headerSize = o.headerSize ?? hsize;
  const clusters = Math.ceil((o.virtualSize ?? 0) / cluster);
  const bitmapLen = Math.ceil(clusters / 8);
  const length = o.fileLength ?? hsize + Math.ceil(bitmapLen / cluster) * cluster;
  const file = new Uint8Array(Math.max(length, 76));
  const v = new DataView(file.buffer);

  const magic = o.magic ?? 'ACOW';
  for (let i = 0; i < 4; i++) file[i] = magic.charCodeAt(i) & 0xff;

  const enc = new TextEncoder();
  const backing = o.backingName === undefined ? undefined : enc.encode(o.backingName);
  const image = enc.encode(o.imageName ?? 'disk.img');
  let at = 76;
  if (backing) {
    v.setUint32(4, at, true);
    v.setUint32(8, backing.length, true);
    file.set(backing, at);
    at += backing.length;
  }
  v.setUint32(12, at, true);
  v.setUint32(16, image.length, true);
  file.set(image, at);

  v.setUint32(20, bits, true);
  v.setBigUint64(24, o.features ?? 0n, true);
  v.setBigUint64(32, o.compat ?? (backing ? 0n : 1n), true);
  v.setUint32(40, headerSize, true);
  putFormat(file, 44, o.backingFormat ?? (backing ? 'raw' : ''));
  putFormat(file, 60, o.imageFormat ?? 'raw');

  if (o.backingOffset !== undefined) v.setUint32(4, o.backingOffset, true);
  if (o.backingSize !== undefined) v.setUint32(8, o.backingSize, true);
  if (o.imageOffset !== undefined) v.setUint32(12, o.imageOffset, true);
  if (o.imageSize !== undefined) v.setUint32(16, o.imageSize, true);
  if (o.bitmap) file.set(o.bitmap, hsize);
  for (const [off, byte] of o.pokes ?? []) file[off] = byte;
  return Buffer.from(file.buffer, 0, file.length);
}

function putFormat(file: Uint8Array, offset: number, value: string | Uint8Array): void {
  const bytes = typeof value === 'string' ? Uint8Array.from(value, (c) => c.charCodeAt(0)) : value;
  file.set(bytes.subarray(0, 16), offset);
}

/** Write a crafted .add-cow file to disk. */
export function writeCraftedAddCow(file: string, o: CraftOptions = {}): Buffer {
  const bytes = craftAddCow(o);
  writeFileSync(file, bytes);
  return bytes;
}
