/**
 * The compact (binary) manifest a machine keeps next to its chunk cache
 * (src/objectstore/manifest-binary.ts, layout in docs/object-store.md): round trip from the
 * published JSON, every field read from its offset and refused with its name and value,
 * a damaged file refused by its checksum, and a 1 TiB image decoded fast.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { chunkTableOf } from '../../src/objectstore/chunk-table.js';
import { decodeCompactManifest, encodeCompactManifest } from '../../src/objectstore/manifest-binary.js';
import { decodeManifest, encodeManifest, type Manifest } from '../../src/objectstore/manifest.js';

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
const IMAGE = 'golden/os/debian-12';
const PUBLISHED = 'c'.repeat(64);

/** Offsets of docs/object-store.md "Compact manifest file". */
const OFF = { magic: 0, formatVersion: 8, flags: 12, virtualSize: 16, chunkSize: 24, chunkCount: 28, stringsLength: 32, strings: 68 };

/** Re-seal an edited file (its last 32 bytes are the SHA-256 of the rest), so only the edited field is wrong. */
function reseal(b: Buffer): Buffer {
  const body = b.subarray(0, b.length - 32);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

function edited(edit: (b: Buffer) => void): Buffer {
  const b = Buffer.from(encodeCompactManifest(good, IMAGE, PUBLISHED));
  edit(b);
  return reseal(b);
}

describe('compact manifest codec', () => {
  it('round-trips a published JSON manifest: fields, chunks (null = zero chunk), image and published hash', () => {
    const fromJson = decodeManifest(encodeManifest(good), 'm');
    const file = encodeCompactManifest(fromJson, IMAGE, PUBLISHED);
    // header 68 + strings (5 × 2-byte length + text) + 4 × 32 table + 32 checksum
    const strings = [IMAGE, good.version, good.created, good.chunkPrefix, good.source!].reduce((n, s) => n + 2 + Buffer.byteLength(s), 0);
    expect(file.length).toBe(68 + strings + 4 * 32 + 32);
    expect(file.toString('latin1', 0, 8)).toBe('cownbdMF');
    expect(file.readUInt32LE(OFF.chunkCount)).toBe(4);
    const back = decodeCompactManifest(file, 'f');
    expect(back.manifest).toEqual(good);
    expect(back.image).toBe(IMAGE);
    expect(back.publishedSha256).toBe(PUBLISHED);
    expect(chunkTableOf(back.manifest).hash(1)).toBeNull();
    expect(chunkTableOf(back.manifest).hash(3)).toBe('b'.repeat(64));
    const { source: _, ...noSource } = good;
    expect(decodeCompactManifest(encodeCompactManifest(noSource, IMAGE, PUBLISHED), 'f').manifest).toEqual(noSource);
  });

  it.each<[string, (b: Buffer) => void, RegExp]>([
    ['magic', (b) => b.write('cownbdXX', OFF.magic, 'latin1'), /f: compact manifest field magic = "cownbdXX"/],
    ['formatVersion', (b) => b.writeUInt32LE(2, OFF.formatVersion), /field formatVersion = 2: expected 1/],
    ['flags', (b) => b.writeUInt32LE(5, OFF.flags), /field flags = 5: unknown bits/],
    ['virtualSize', (b) => b.writeBigUInt64LE(2n ** 60n, OFF.virtualSize), /field virtualSize = "1152921504606846976": above 2\^53/],
    ['chunkSize (range)', (b) => b.writeUInt32LE(1000, OFF.chunkSize), /field chunkSize = 1000/],
    ['chunkSize (power of two)', (b) => b.writeUInt32LE(3 << 20, OFF.chunkSize), /field chunkSize = 3145728: must be a power of two/],
    ['chunkCount', (b) => b.writeUInt32LE(5, OFF.chunkCount), /field \(file length\) = \d+: header says \d+ \(\d+ bytes of strings, 5 chunks\)/],
    ['stringsLength', (b) => b.writeUInt32LE(1 << 20, OFF.stringsLength), /field stringsLength = 1048576: above 65536/],
    ['image', (b) => b.write('G', OFF.strings + 2, 'latin1'), /field image = "Golden\/os\/debian-12": not BUCKET\/PREFIX/],
    ['image length', (b) => b.writeUInt16LE(60_000, OFF.strings), /field image length = 60000: runs past the strings' end/],
    ['version', (b) => b.write('X', OFF.strings + 2 + IMAGE.length + 2, 'latin1'), /field version = "X0261202T141500.123Z-1a2b3c4d"/],
  ])('refuses a bad %s, naming the field and value', (_field, edit, message) => {
    expect(() => decodeCompactManifest(edited(edit), 'f')).toThrow(message);
  });

  it('refuses a damaged or torn file by its checksum, and a file too short for a header', () => {
    const file = Buffer.from(encodeCompactManifest(good, IMAGE, PUBLISHED));
    file[file.length - 40]! ^= 1; // one bit of the last chunk hash
    expect(() => decodeCompactManifest(file, 'f')).toThrow(/f: compact manifest field checksum = "[0-9a-f]{64}": does not match the file/);
    expect(() => decodeCompactManifest(file.subarray(0, file.length - 32), 'f')).toThrow(/checksum/);
    expect(() => decodeCompactManifest(Buffer.alloc(40), 'f')).toThrow(/field \(file length\) = 40: shorter than the 100-byte header/);
  });

  it('a JSON manifest naming the all-zero hash is refused (32 zero bytes mark a zero chunk in the table)', () => {
    const doc = JSON.parse(encodeManifest(good).toString()) as { chunks: unknown[] };
    doc.chunks[2] = '0'.repeat(64);
    expect(() => decodeManifest(Buffer.from(JSON.stringify(doc)), 'm')).toThrow(/field chunks\.2 = "0{64}": reserved/);
  });

  it('a 1 TiB image (2^20 chunks of 1 MiB) decodes from its compact file, many times faster than from its JSON', () => {
    const n = 1 << 20;
    const table = randomBytes(n * 32);
    const chunks = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? null : table.toString('hex', i * 32, i * 32 + 32)));
    const tiB: Manifest = { ...good, virtualSize: n * 1024 * 1024, chunks };
    const file = encodeCompactManifest(tiB, IMAGE, PUBLISHED);
    expect(file.length).toBe(68 + 5 * 2 + IMAGE.length + good.version.length + good.created.length + good.chunkPrefix.length + good.source!.length + n * 32 + 32);
    const json = encodeManifest(tiB);
    const times: number[] = [];
    const jsonTimes: number[] = [];
    let last;
    for (let i = 0; i < 3; i++) {
      let t = performance.now();
      last = decodeCompactManifest(file, 'f');
      times.push(performance.now() - t);
      t = performance.now();
      decodeManifest(json, 'json');
      jsonTimes.push(performance.now() - t);
    }
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[1]!;
    console.log(`1 TiB manifest: compact decode ${times.map((x) => x.toFixed(0)).join(', ')} ms; JSON decode ${jsonTimes.map((x) => x.toFixed(0)).join(', ')} ms`);
    // ~60 ms on an idle machine (docs/object-store.md); the test machine is shared, so relative.
    expect(median(times) * 4).toBeLessThan(median(jsonTimes));
    const t = chunkTableOf(last!.manifest);
    expect(t.count).toBe(n);
    expect(t.hash(0)).toBeNull();
    expect(t.hash(n - 1)).toBe(chunks[n - 1]);
    expect(t.storedCount()).toBe(n - Math.ceil(n / 3));
  });
});
