/**
 * add-cow header: fixtures crafted byte by byte (test/helpers/add-cow-craft.ts, independent
 * of the production encoder). One test per refusal path; each checks the message names
 * the field and the value. Also: encode → exact bytes equal to the crafted fixture.
 */
import { describe, expect, it } from 'vitest';
import { craftAddCow } from '../helpers/add-cow-craft.js';
import {
  AddCowHeaderError,
  addCowMetadataLength,
  encodeAddCowHeader,
  parseAddCowHeader,
} from '../../src/formats/add-cow/index.js';

const header = (buf: Buffer): Buffer => buf.subarray(0, Math.max(4096, 2 ** buf.readUInt32LE(20)));

describe('add-cow header: valid files', () => {
  it('parses a backing + image header with 64 KiB clusters (the spec example)', () => {
    const buf = craftAddCow({ backingName: 'base.img', imageName: 'disk.img', virtualSize: 1 << 20 });
    expect(buf.length).toBe(65536 + 65536);
    const h = parseAddCowHeader(buf);
    expect(h).toMatchObject({
      backingNameOffset: 76,
      backingNameSize: 8,
      imageNameOffset: 84,
      imageNameSize: 8,
      clusterBits: 16,
      clusterSize: 65536,
      features: 0n,
      compatFeatures: 0n,
      headerSize: 65536,
      backingName: 'base.img',
      backingFormat: 'raw',
      imageName: 'disk.img',
      imageFormat: 'raw',
      allAllocated: false,
    });
    expect(Object.isFrozen(h)).toBe(true);
  });

  it('parses a header without backing file (ALL_ALLOCATED) with 4 KiB clusters', () => {
    const h = parseAddCowHeader(craftAddCow({ clusterBits: 12, imageName: '/abs/disk.img' }));
    expect(h.backingName).toBeUndefined();
    expect(h.backingFormat).toBe('');
    expect(h.headerSize).toBe(4096);
    expect(h.allAllocated).toBe(true);
    expect(h.imageName).toBe('/abs/disk.img');
  });

  it('accepts 2 MiB clusters (cluster_bits 21, HEADER_SIZE = cluster)', () => {
    const h = parseAddCowHeader(header(craftAddCow({ clusterBits: 21, backingName: 'b', imageName: 'i' })));
    expect(h.headerSize).toBe(2 * 1024 * 1024);
  });

  it('ignores unknown compatible feature bits but keeps them', () => {
    const h = parseAddCowHeader(craftAddCow({ backingName: 'b', compat: 0x8000_0000_0000_0006n }));
    expect(h.allAllocated).toBe(false);
    expect(h.compatFeatures).toBe(0x8000_0000_0000_0006n);
  });

  it('accepts a V18-style unterminated 16-character format string', () => {
    const h = parseAddCowHeader(craftAddCow({ backingName: 'b', backingFormat: 'abcdefghijklmnop' }));
    expect(h.backingFormat).toBe('abcdefghijklmnop');
  });

  it('accepts names placed anywhere in the name area (not only at 76)', () => {
    const buf = craftAddCow({ clusterBits: 12, imageName: 'x', imageOffset: 4094, imageSize: 1, pokes: [[76, 0], [4094, 0x7a]] });
    expect(parseAddCowHeader(buf).imageName).toBe('z');
  });

  it('encodes exactly the bytes the independent crafter writes', () => {
    for (const o of [
      { clusterBits: 16, backingName: '../base/base.img', imageName: 'disk.img' },
      { clusterBits: 12, imageName: 'only.img' },
      { clusterBits: 21, backingName: '/a/b', imageName: '/c/d', backingFormat: 'cow' },
    ]) {
      const crafted = header(craftAddCow(o));
      const encoded = encodeAddCowHeader({
        clusterBits: o.clusterBits,
        imageName: o.imageName,
        imageFormat: 'raw',
        backingName: o.backingName,
        backingFormat: o.backingName ? (o.backingFormat ?? 'raw') : undefined,
        compatFeatures: o.backingName ? 0n : 1n,
      });
      expect(encoded.equals(crafted)).toBe(true);
      expect(parseAddCowHeader(encoded).imageName).toBe(o.imageName);
    }
  });

  it('metadata length = HEADER_SIZE + roundup(ceil(clusters/8), cluster)', () => {
    expect(addCowMetadataLength(1 << 20, 16)).toBe(65536 + 65536);
    expect(addCowMetadataLength(0, 16)).toBe(65536);
    // 4 KiB clusters, 1 GiB: 262144 clusters → 32768 bitmap bytes → 8 clusters.
    expect(addCowMetadataLength(1 << 30, 12)).toBe(4096 + 32768);
    expect(addCowMetadataLength((1 << 30) + 512, 12)).toBe(4096 + 32768 + 4096);
  });
});

/** Each refusal: [title, crafted bytes, regex the message must match]. */
const refusals: Array<[string, Buffer, RegExp]> = [
  ['a file shorter than the fixed header', craftAddCow().subarray(0, 40), /too short.*40 bytes/],
  ['bad magic', craftAddCow({ magic: 'ACOX' }), /bad magic 41434f58/],
  ['cluster_bits below 12', craftAddCow({ clusterBits: 11, headerSize: 4096 }), /cluster_bits 11 out of range/],
  ['cluster_bits above 21', craftAddCow({ clusterBits: 22, fileLength: 4096, headerSize: 4194304 }), /cluster_bits 22 out of range/],
  ['header size not max(cluster, 4096)', craftAddCow({ clusterBits: 16, headerSize: 4096 }), /header size 4096 must equal .* 65536/],
  ['header size 8192 with 4 KiB clusters', craftAddCow({ clusterBits: 12, headerSize: 8192, fileLength: 8192 }), /header size 8192 must equal .* 4096/],
  ['a file shorter than HEADER_SIZE', craftAddCow({ clusterBits: 16 }).subarray(0, 4096), /too short.*65536/],
  ['incompatible feature bits', craftAddCow({ backingName: 'b', features: 0x12n }), /incompatible features 0x12 \(bits 1, 4\)/],
  ['backing offset set but size 0', craftAddCow({ backingName: 'b', backingSize: 0 }), /backing file name offset 76 and size 0/],
  ['backing size set but offset 0', craftAddCow({ backingName: 'b', backingOffset: 0 }), /backing file name offset 0 and size 1/],
  ['backing offset below 76', craftAddCow({ backingName: 'b', backingOffset: 75 }), /backing file name offset 75 out of range/],
  ['backing offset above HEADER_SIZE-2', craftAddCow({ clusterBits: 12, backingName: 'b', backingOffset: 4095 }), /backing file name offset 4095 out of range: must be in \[76, 4094\]/],
  ['backing size >= HEADER_SIZE-76', craftAddCow({ clusterBits: 12, backingName: 'b', backingSize: 4020 }), /backing file name size 4020 too large/],
  ['backing offset+size past HEADER_SIZE', craftAddCow({ clusterBits: 12, backingName: 'b', backingOffset: 4000, backingSize: 100 }), /backing file name offset 4000 \+ size 100 = 4100 runs past the header size 4096/],
  ['image name missing (offset 0, size 0)', craftAddCow({ imageOffset: 0, imageSize: 0 }), /image file name offset is 0: .* mandatory/],
  ['image offset set but size 0', craftAddCow({ imageSize: 0 }), /image file name offset 76 and size 0/],
  ['image offset below 76', craftAddCow({ imageOffset: 10 }), /image file name offset 10 out of range/],
  ['image offset above HEADER_SIZE-2', craftAddCow({ clusterBits: 12, imageOffset: 4095, imageSize: 1 }), /image file name offset 4095 out of range/],
  ['image size >= HEADER_SIZE-76', craftAddCow({ clusterBits: 12, imageSize: 4020 }), /image file name size 4020 too large/],
  ['image offset+size past HEADER_SIZE', craftAddCow({ clusterBits: 12, imageOffset: 4090, imageSize: 10 }), /image file name offset 4090 \+ size 10 = 4100 runs past/],
  ['a NUL byte inside a name', craftAddCow({ imageName: 'a\0b' }), /image file name .* contains a NUL byte/],
  ['an empty image format', craftAddCow({ imageFormat: '' }), /image file format .* is empty/],
  ['a non-printable byte in a format', craftAddCow({ imageFormat: 'ra\x01' }), /image file format .* non-printable byte 0x01/],
  ['garbage after the format NUL', craftAddCow({ backingName: 'b', backingFormat: 'raw\0x' }), /backing file format .* non-zero byte at offset 48 after its NUL/],
  ['a backing format without backing file', craftAddCow({ backingFormat: 'raw' }), /backing file format is "raw" but there is no backing file/],
  ['a non-zero byte in the name area outside the names', craftAddCow({ backingName: 'b', pokes: [[200, 0xaa]] }), /name area byte at offset 200 is 0xaa/],
  ['a non-zero byte at the last header byte', craftAddCow({ clusterBits: 12, pokes: [[4095, 1]] }), /name area byte at offset 4095/],
];

describe('add-cow header: refusals (one per rule)', () => {
  it.each(refusals)('refuses %s', (_title, buf, message) => {
    let caught: unknown;
    try {
      parseAddCowHeader(buf);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(AddCowHeaderError);
    expect((caught as Error).message).toMatch(message);
  });
});

describe('add-cow header: encoder refusals', () => {
  const base = { clusterBits: 16, imageName: 'i', imageFormat: 'raw' };
  it.each([
    ['cluster_bits 9', { ...base, clusterBits: 9 }, /cluster_bits 9/],
    ['a 16-character format (must be NUL-terminated)', { ...base, imageFormat: 'abcdefghijklmnop' }, /image file format "abcdefghijklmnop" must be 1..15/],
    ['names longer than the name area', { ...base, clusterBits: 12, imageName: 'x'.repeat(4020) }, /file names are too long: 4020 bytes/],
    ['an empty image name', { ...base, imageName: '' }, /image file name is empty/],
    ['a backing format without a backing name', { ...base, backingFormat: 'raw' }, /given without a backing file/],
  ] as const)('refuses %s', (_t, fields, message) => {
    expect(() => encodeAddCowHeader(fields)).toThrow(message);
  });
});
