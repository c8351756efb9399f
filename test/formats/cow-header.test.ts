/**
 * cow-header / cow-layout unit tests against crafted byte fixtures (test/helpers/cow-craft.ts,
 * an encoder independent of the production one), plus golden bytes from docs/cow-format.md#v3.
 */
import { describe, expect, it } from 'vitest';
import { decodeCowHeader, detectCowLayout, encodeCowHeader, type CowLayoutName } from '../../src/formats/cow/cow-header.js';
import { cowGeometry } from '../../src/formats/cow/cow-layout.js';
import { craftCow, type CraftLayout } from '../helpers/cow-craft.js';

const MiB = 1024 * 1024;

describe('cow header: detection (kernel read_cow_header rules)', () => {
  const cases: Array<[CraftLayout, CowLayoutName[]]> = [
    ['v1', ['v1']],
    ['v2', ['v2', 'qemu-i386', 'qemu-x86_64']],
    ['v3', ['v3']],
    ['v3-broken', ['v3-broken']],
    ['qemu-i386', ['v2', 'qemu-i386', 'qemu-x86_64']],
    ['qemu-x86_64', ['v2', 'qemu-i386', 'qemu-x86_64']],
  ];
  it.each(cases)('%s is detected as %j', (layout, expected) => {
    const { bytes } = craftCow({ layout, backingPath: '/b/base.img', size: MiB, mtime: 1 });
    expect(detectCowLayout(bytes.subarray(0, 4136))).toEqual(expected);
  });

  it('packed v3 with an empty backing path is mis-detected as broken (as the kernel does)', () => {
    const { bytes } = craftCow({ layout: 'v3', backingPath: '', size: MiB, mtime: 1 });
    expect(detectCowLayout(bytes)).toEqual(['v3-broken']);
  });

  it('refuses a non-COW magic, naming the value', () => {
    const { bytes } = craftCow({ layout: 'v3', backingPath: '/b', size: MiB, mtime: 1, magic: Buffer.from('QFI\xfb', 'latin1') });
    expect(() => detectCowLayout(bytes)).toThrow(/magic 0x514649fb/);
  });

  it('refuses version 7', () => {
    const { bytes } = craftCow({ layout: 'v3', backingPath: '/b', size: MiB, mtime: 1, version: 7 });
    expect(() => detectCowLayout(bytes)).toThrow(/version 7/);
  });

  it('refuses a header shorter than 8 bytes', () => {
    expect(() => detectCowLayout(Buffer.from('OOOM'))).toThrow(/short header: 4 bytes/);
  });

  it('a BE magic with version 1 still uses v1 (host-order) fields', () => {
    const { bytes } = craftCow({ layout: 'v1', backingPath: '/b/x', size: MiB, mtime: 77 });
    Buffer.from('OOOM', 'latin1').copy(bytes, 0);
    bytes.writeUInt32BE(1, 4);
    expect(detectCowLayout(bytes)).toEqual(['v1']);
    const h = decodeCowHeader(bytes, 'v1');
    expect(h.size).toBe(MiB);
    expect(h.mtime).toBe(77);
  });
});

describe('cow header: decode every layout by its own offsets', () => {
  const layouts: CraftLayout[] = ['v1', 'v2', 'v3', 'v3-broken', 'qemu-i386', 'qemu-x86_64'];
  it.each(layouts)('%s: fields, and garbage after the NUL / in padding is ignored', (layout) => {
    const size = 1_000_000;
    const mtime = layout.startsWith('qemu') ? -5 : 0xfedcba98;
    const c = craftCow({ layout, backingPath: '/some/dir/base.img', size, mtime, garbage: true });
    const h = decodeCowHeader(c.bytes.subarray(0, 4136), layout);
    expect(h.layout).toBe(layout);
    expect(h.backingFile).toBe('/some/dir/base.img');
    expect(h.size).toBe(size);
    expect(h.mtime).toBe(layout.startsWith('qemu') ? -5 : 0xfedcba98);
    expect(h.sectorSize).toBe(512);
    const g = cowGeometry(h);
    expect(g.bitmapOffset).toBe(c.bitmapOffset);
    expect(g.bitmapLength).toBe(c.bitmapLength);
    expect(g.dataOffset).toBe(c.dataOffset);
    expect(g.virtualSize).toBe(1_000_448);
  });

  it('offsets match the reference vectors (docs/cow-format.md#geometry, docs/cow-format.md#vectors)', () => {
    const geo = (layout: CraftLayout, size: number, alignment = 4096) => {
      const c = craftCow({ layout, backingPath: '/b', size, mtime: 0, alignment });
      const g = cowGeometry(decodeCowHeader(c.bytes, layout));
      return [g.bitmapOffset, g.dataOffset, g.bitmapLength];
    };
    expect(geo('v1', MiB)).toEqual([280, 1024, 256]);
    expect(geo('v2', MiB)).toEqual([4120, 4608, 256]);
    expect(geo('v3', MiB)).toEqual([8192, 12288, 256]);
    expect(geo('v3', MiB, 512)).toEqual([4608, 5120, 256]);
    expect(geo('v3', MiB, 8)).toEqual([4128, 4384, 256]);
    expect(geo('v3-broken', MiB, 8)).toEqual([4136, 4392, 256]);
    expect(geo('v3', 100 * MiB)).toEqual([8192, 36864, 25600]);
    expect(geo('qemu-i386', MiB)).toEqual([1048, 1536, 256]);
    expect(geo('qemu-x86_64', MiB)).toEqual([1056, 1536, 256]);
  });

  it('v2 rounding bug (docs/cow-format.md#c11): 2049 sectors → bitmap_len 256, sector 2048 not representable', () => {
    const c = craftCow({ layout: 'v2', backingPath: '/b', size: 2049 * 512, mtime: 0 });
    const g = cowGeometry(decodeCowHeader(c.bytes, 'v2'));
    expect(g.bitmapLength).toBe(256);
    expect(g.sectors).toBe(2049);
    expect(g.representableSectors).toBe(2048);
    expect(g.dataOffset).toBe(4608);
  });

  it('golden v3 header bytes written by uml_mkcow (docs/cow-format.md#v3)', () => {
    const h = decodeCowHeader(
      Buffer.concat([
        Buffer.from('4f4f4f4d000000035e0d5da500000000001000000000020000001000000000002f782f792e696d6700', 'hex'),
        Buffer.alloc(4128 - 41),
      ]),
      'v3',
    );
    expect(h).toMatchObject({ mtime: 0x5e0d5da5, size: MiB, sectorSize: 512, alignment: 4096, backingFile: '/x/y.img' });
  });
});

describe('cow header: refusals name the field and value', () => {
  const v3 = (patch: (b: Buffer) => void) => {
    const { bytes } = craftCow({ layout: 'v3', backingPath: '/b', size: MiB, mtime: 1 });
    patch(bytes);
    return bytes;
  };
  it('alignment 0', () => {
    expect(() => decodeCowHeader(v3((b) => b.writeUInt32BE(0, 24)), 'v3')).toThrow(/alignment 0/);
  });
  it('alignment not a power of two', () => {
    expect(() => decodeCowHeader(v3((b) => b.writeUInt32BE(3000, 24)), 'v3')).toThrow(/alignment 3000/);
  });
  it('sectorsize 4096', () => {
    expect(() => decodeCowHeader(v3((b) => b.writeInt32BE(4096, 20)), 'v3')).toThrow(/sectorsize 4096 unsupported/);
  });
  it('sectorsize 4096 in a v2 header', () => {
    const { bytes } = craftCow({ layout: 'v2', backingPath: '/b', size: MiB, mtime: 1, sectorSize: 4096 });
    expect(() => decodeCowHeader(bytes, 'v2')).toThrow(/sectorsize 4096 unsupported/);
  });
  it('path without NUL', () => {
    expect(() => decodeCowHeader(v3((b) => b.fill(0x41, 32, 4128)), 'v3')).toThrow(/backing_file is not NUL-terminated/);
  });
  it('header shorter than the layout', () => {
    expect(() => decodeCowHeader(v3(() => {}).subarray(0, 1000), 'v3')).toThrow(/short header: 1000 bytes, layout v3 needs 4128/);
  });
  it('size beyond 2^53', () => {
    expect(() => decodeCowHeader(v3((b) => b.writeBigUInt64BE(1n << 60n, 12)), 'v3')).toThrow(/size 1152921504606846976 too large/);
  });
  it('version that does not match a forced layout', () => {
    expect(() => decodeCowHeader(v3(() => {}), 'v2')).toThrow(/version 3 does not match layout v2/);
  });
});

describe('cow header: encoder round-trips and matches the independent crafter', () => {
  const layouts: CraftLayout[] = ['v1', 'v2', 'v3', 'v3-broken', 'qemu-i386', 'qemu-x86_64'];
  it.each(layouts)('%s', (layout) => {
    const c = craftCow({ layout, backingPath: '/a/b.img', size: 3 * MiB + 512, mtime: 12345 });
    const h = decodeCowHeader(c.bytes, layout);
    const enc = encodeCowHeader(h);
    expect(enc.equals(c.bytes.subarray(0, enc.length))).toBe(true);
  });
  it('refuses to encode an empty backing path', () => {
    expect(() => encodeCowHeader({ layout: 'v3', backingFile: '', mtime: 0, size: 512, sectorSize: 512, alignment: 4096 })).toThrow(
      /empty backing_file/,
    );
  });
});
