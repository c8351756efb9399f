/**
 * Object-store codecs (no I/O): s3:// addresses and manifests. Bad input is refused with a
 * message naming the part, field and value.
 */
import { describe, expect, it } from 'vitest';
import { decodeManifest, encodeManifest, newVersionId, type Manifest } from '../../src/objectstore/manifest.js';
import { formatObjectStoreUri, parseObjectStoreUri } from '../../src/objectstore/uri.js';

const H = 'a'.repeat(64);
const good: Manifest = {
  version: '20261202T141500.123Z-1a2b3c4d',
  created: '2026-12-02T14:15:00.123Z',
  virtualSize: 3 * 1024 * 1024 + 512,
  chunkSize: 1024 * 1024,
  chunkPrefix: 'cownbd-chunks/sha256/',
  source: 'golden.img',
  chunks: [H, null, H, 'b'.repeat(64)],
};

function withField(field: string, value: unknown): Buffer {
  const doc = JSON.parse(encodeManifest(good).toString()) as Record<string, unknown>;
  doc[field] = value;
  return Buffer.from(JSON.stringify(doc));
}

describe('s3:// addresses', () => {
  it('parses bucket, prefix and an optional pinned version, and formats them back', () => {
    expect(parseObjectStoreUri('s3://golden/os/debian-12')).toEqual({ bucket: 'golden', prefix: 'os/debian-12' });
    const pinned = parseObjectStoreUri('s3://golden/debian-12@20261202T141500.123Z-1a2b3c4d');
    expect(pinned).toEqual({ bucket: 'golden', prefix: 'debian-12', version: '20261202T141500.123Z-1a2b3c4d' });
    expect(formatObjectStoreUri(pinned)).toBe('s3://golden/debian-12@20261202T141500.123Z-1a2b3c4d');
  });

  it.each([
    ['s3://golden', /missing image prefix/],
    ['s3://Golden_Bucket/x', /bucket "Golden_Bucket"/],
    ['s3://golden/', /prefix is empty/],
    ['s3://golden/a/../b', /prefix segment "\.\."/],
    ['s3://golden/x@latest', /version "latest"/],
    ['http://golden/x', /not an object-store address/],
  ])('refuses %s, naming the part', (text, message) => {
    expect(() => parseObjectStoreUri(text)).toThrow(message);
  });
});

describe('manifest codec', () => {
  it('round-trips', () => {
    expect(decodeManifest(encodeManifest(good), 'm')).toEqual(good);
  });

  it('makes sortable, distinct version ids', () => {
    const a = newVersionId(new Date('2026-12-02T14:15:00.123Z'), Buffer.from([1, 2, 3, 4]));
    const b = newVersionId(new Date('2026-12-02T14:15:01.000Z'), Buffer.from([0, 0, 0, 0]));
    expect(a).toBe('20261202T141500.123Z-01020304');
    expect(a < b).toBe(true);
    expect(parseObjectStoreUri(`s3://golden/x@${a}`).version).toBe(a);
  });

  it.each([
    ['format', 'qcow2', /field format = "qcow2"/],
    ['formatVersion', 2, /field formatVersion = 2/],
    ['chunkSize', 1000, /field chunkSize = 1000/],
    ['chunkSize', 3 * 1024 * 1024, /chunkSize = 3145728: must be a power of two/],
    ['virtualSize', -1, /field virtualSize = -1/],
    ['chunks', [H], /chunks has 1 entries; virtualSize 3146240 \/ chunkSize 1048576 needs 4/],
    ['chunks', [H, null, 'XYZ', H], /field chunks\.2 = "XYZ"/],
    ['chunkPrefix', '../x/', /field chunkPrefix = "\.\.\/x\/"/],
    ['hash', 'md5', /field hash = "md5"/],
  ])('refuses %s = %j, naming field and value', (field, value, message) => {
    expect(() => decodeManifest(withField(field, value), 's3://golden/x@v')).toThrow(message);
  });

  it('refuses a manifest that is not JSON', () => {
    expect(() => decodeManifest(Buffer.from('{"format":'), 's3://golden/x@v')).toThrow(/s3:\/\/golden\/x@v: manifest is not JSON/);
  });
});
