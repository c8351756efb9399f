/**
 * Independent generator of UML/QEMU cow files for tests, written straight from the
 * byte tables of docs/cow-format.md (the layout sections and docs/cow-format.md#geometry;
 * NOT from src/formats/cow), so
 * a shared misunderstanding cannot make encoder and decoder agree by accident.
 *
 * Every field is placed at an explicit offset:
 *
 *   layout       sizeof  path@len   mtime@   size@   ss@    align@  bo             bl                      do
 *   v1 (LE)      280     8/256      264      268     276    —       280            floor((size+ss-1)/(8ss)) roundup(bo+bl, ss)
 *   v2           4120    8/4096     4104     4108    4116   —       4120           (same as v1)             roundup(bo+bl, ss)
 *   v3           4128    32/4096    8        12      20     24      roundup(4128,a) ceil(ceil(size/ss)/8)   roundup(bo+bl, a)
 *   v3-broken    4136    36/4096    8        16      24     28      roundup(4136,a) (same as v3)            roundup(bo+bl, a)
 *   qemu-i386    1048    8/1024     1032     1036    1044   —       1048           ceil(floor(size/512)/8)  roundup(bo+bl, 512)
 *   qemu-x86_64  1056    8/1024     1032     1040    1048   —       1056           (same)                  roundup(bo+bl, 512)
 */
import { writeFileSync } from 'node:fs';

export type CraftLayout = 'v1' | 'v2' | 'v3' | 'v3-broken' | 'qemu-i386' | 'qemu-x86_64';

export interface CraftSpec {
  layout: CraftLayout;
  backingPath: string;
  size: number;
  mtime: number;
  sectorSize?: number;
  alignment?: number;
  /** sector → 512 bytes of data (or a fill byte). */
  sectors?: Record<number, number | Buffer>;
  /** Garbage to put after the path NUL / in padding (tests that readers ignore it). */
  garbage?: boolean;
  /** Override the version field (negative tests). */
  version?: number;
  /** Override the magic bytes (negative tests). */
  magic?: Buffer;
  /** Truncate the file to this length (negative tests). */
  truncateTo?: number;
}

export interface Crafted {
  bytes: Buffer;
  bitmapOffset: number;
  bitmapLength: number;
  dataOffset: number;
}

const roundup = (x: number, a: number): number => Math.ceil(x / a) * a;

export function craftCow(spec: CraftSpec): Crafted {
  const ss = spec.sectorSize ?? 512;
  const align = spec.alignment ?? 4096;
  const size = spec.size;
  let hdr: Buffer;
  let bo: number;
  let bl: number;
  let dOff: number;
  const path = Buffer.from(spec.backingPath, 'utf8');
  switch (spec.layout) {
    case 'v1': {
      hdr = Buffer.alloc(280);
      Buffer.from([0x4d, 0x4f, 0x4f, 0x4f]).copy(hdr, 0); // host (LE) magic: "MOOO"
      hdr.writeUInt32LE(spec.version ?? 1, 4);
      path.copy(hdr, 8);
      if (spec.garbage) hdr.fill(0xa5, 8 + path.length + 1, 8 + 256);
      hdr.writeUInt32LE(spec.mtime >>> 0, 264);
      hdr.writeBigUInt64LE(BigInt(size), 268);
      hdr.writeInt32LE(ss, 276);
      bo = 280;
      bl = Math.floor((size + ss - 1) / (8 * ss));
      dOff = roundup(bo + bl, ss);
      break;
    }
    case 'v2': {
      hdr = Buffer.alloc(4120);
      Buffer.from('OOOM', 'latin1').copy(hdr, 0);
      hdr.writeUInt32BE(spec.version ?? 2, 4);
      path.copy(hdr, 8);
      if (spec.garbage) hdr.fill(0xa5, 8 + path.length + 1, 8 + 4096);
      hdr.writeUInt32BE(spec.mtime >>> 0, 4104);
      hdr.writeBigUInt64BE(BigInt(size), 4108);
      hdr.writeInt32BE(ss, 4116);
      bo = 4120;
      bl = Math.floor((size + ss - 1) / (8 * ss));
      dOff = roundup(bo + bl, ss);
      break;
    }
    case 'v3': {
      hdr = Buffer.alloc(4128);
      Buffer.from('OOOM', 'latin1').copy(hdr, 0);
      hdr.writeUInt32BE(spec.version ?? 3, 4);
      hdr.writeUInt32BE(spec.mtime >>> 0, 8);
      hdr.writeBigUInt64BE(BigInt(size), 12);
      hdr.writeInt32BE(ss, 20);
      hdr.writeUInt32BE(align, 24);
      hdr.writeUInt32BE(0, 28);
      path.copy(hdr, 32);
      if (spec.garbage) hdr.fill(0xa5, 32 + path.length + 1, 4128);
      bo = roundup(4128, align);
      bl = Math.ceil(Math.ceil(size / ss) / 8);
      dOff = roundup(bo + bl, align);
      break;
    }
    case 'v3-broken': {
      hdr = Buffer.alloc(4136);
      Buffer.from('OOOM', 'latin1').copy(hdr, 0);
      hdr.writeUInt32BE(spec.version ?? 3, 4);
      hdr.writeUInt32BE(spec.mtime >>> 0, 8);
      hdr.writeUInt32BE(spec.garbage ? 0xdeadbeef : 0, 12); // the 4-byte hole
      hdr.writeBigUInt64BE(BigInt(size), 16);
      hdr.writeInt32BE(ss, 24);
      hdr.writeUInt32BE(align, 28);
      hdr.writeUInt32BE(0, 32);
      path.copy(hdr, 36);
      if (spec.garbage) hdr.fill(0xa5, 36 + path.length + 1, 4136);
      bo = roundup(4136, align);
      bl = Math.ceil(Math.ceil(size / ss) / 8);
      dOff = roundup(bo + bl, align);
      break;
    }
    case 'qemu-i386':
    case 'qemu-x86_64': {
      const x64 = spec.layout === 'qemu-x86_64';
      hdr = Buffer.alloc(x64 ? 1056 : 1048);
      Buffer.from('OOOM', 'latin1').copy(hdr, 0);
      hdr.writeUInt32BE(spec.version ?? 2, 4);
      path.copy(hdr, 8);
      hdr.writeInt32BE(spec.mtime | 0, 1032);
      hdr.writeBigUInt64BE(BigInt(size), x64 ? 1040 : 1036);
      hdr.writeUInt32BE(ss, x64 ? 1048 : 1044);
      bo = hdr.length;
      bl = Math.ceil(Math.floor(size / 512) / 8);
      dOff = roundup(bo + bl, 512);
      break;
    }
  }
  if (spec.magic) spec.magic.copy(hdr, 0);
  const qemu = spec.layout.startsWith('qemu');
  const maxSector = Math.max(-1, ...Object.keys(spec.sectors ?? {}).map(Number));
  const fileLen = qemu ? Math.max(bo + bl, dOff + (maxSector + 1) * 512) : Math.max(dOff + size, dOff + (maxSector + 1) * 512);
  const bytes = Buffer.alloc(fileLen);
  hdr.copy(bytes, 0);
  if (spec.garbage) {
    bytes.fill(0x5a, hdr.length, bo); // header padding
    bytes.fill(0x5a, bo + bl, dOff); // after bitmap_len
    const sectors = Math.ceil(size / 512);
    // tail bits of the last bitmap byte, past the sector count
    if (sectors % 8 !== 0 && bl * 8 >= sectors) bytes[bo + bl - 1] = bytes[bo + bl - 1]! | (0xff << (sectors % 8)) & 0xff;
  }
  for (const [k, v] of Object.entries(spec.sectors ?? {})) {
    const s = Number(k);
    if (s < bl * 8) bytes[bo + (s >> 3)] = bytes[bo + (s >> 3)]! | (1 << (s & 7));
    const data = typeof v === 'number' ? Buffer.alloc(512, v) : v;
    data.copy(bytes, dOff + s * 512);
  }
  const out = spec.truncateTo !== undefined ? bytes.subarray(0, spec.truncateTo) : bytes;
  return { bytes: out, bitmapOffset: bo, bitmapLength: bl, dataOffset: dOff };
}

export function writeCraftedCow(file: string, spec: CraftSpec): Crafted {
  const c = craftCow(spec);
  writeFileSync(file, c.bytes);
  return c;
}

/** Expected merged view: backing (zero-padded to roundup(size,512)) with the crafted sectors applied. */
export function expectedView(backing: Buffer, spec: CraftSpec, representable?: number): Buffer {
  const size = Math.ceil(spec.size / 512) * 512;
  const out = Buffer.alloc(size);
  backing.copy(out, 0, 0, Math.min(backing.length, size));
  for (const [k, v] of Object.entries(spec.sectors ?? {})) {
    const s = Number(k);
    if (representable !== undefined && s >= representable) continue;
    const data = typeof v === 'number' ? Buffer.alloc(512, v) : v;
    data.copy(out, s * 512);
  }
  return out;
}
