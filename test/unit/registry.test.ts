/**
 * The format registry: magic-only detection of named images (raw fallback), explicit
 * names, and a record that claims specs by their form (the way an object-store base will
 * be added) taking precedence over magic and over a backing's default format name.
 */
import { writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FormatRecord } from '../../src/formats/format-record.js';
import { backingRecord, detectFormat, FORMAT_NAMES, FORMATS, formatByName } from '../../src/formats/registry.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';

let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('registry-');
});
afterEach(() => tmp.cleanup());

const claiming: FormatRecord = {
  name: 'mem',
  summary: 'test record claiming mem:// specs',
  overlay: false,
  claims: (spec) => spec.startsWith('mem://'),
  open: () => Promise.reject(new Error('not opened in this test')),
  inspect: () => Promise.reject(new Error('not inspected in this test')),
};

describe('format registry', () => {
  it('lists raw, cow, add-cow, qcow2 and s3, each name once; s3 is chosen by its scheme, not by name, and names them in errors', () => {
    expect(FORMAT_NAMES).toEqual(['raw', 'cow', 'add-cow', 'qcow2']);
    expect(FORMATS.map((f) => f.name)).toEqual(['raw', 'cow', 'add-cow', 'qcow2', 's3']);
    expect(new Set(FORMATS.map((f) => f.name)).size).toBe(FORMATS.length);
    expect(() => formatByName('vmdk')).toThrow(/format "vmdk" is not supported \(supported: raw, cow, add-cow, qcow2\)/);
  });

  it('detects cow (both byte orders) and add-cow by magic; anything else, short files included, is raw', async () => {
    const cases: Array<[string, Buffer, string]> = [
      ['v3.cow', Buffer.from('4f4f4f4d00000003', 'hex'), 'cow'],
      ['v1.cow', Buffer.from('4d4f4f4f01000000', 'hex'), 'cow'],
      ['x.add-cow', Buffer.from('ACOW\0\0\0\0', 'latin1'), 'add-cow'],
      ['short', Buffer.from('OOO'), 'raw'],
      ['plain', Buffer.alloc(4096, 7), 'raw'],
    ];
    for (const [name, head, want] of cases) {
      writeFileSync(tmp.file(name), head);
      expect((await detectFormat(tmp.file(name))).name, name).toBe(want);
    }
  });

  it('a record that claims a spec wins before any file is read, for named images and backings', async () => {
    const formats = [claiming, ...FORMATS];
    expect((await detectFormat('mem://bucket/prefix@3', formats)).name).toBe('mem');
    expect(backingRecord('mem://bucket/prefix', 'raw', formats).name).toBe('mem');
    expect(backingRecord(tmp.file('base.img'), 'raw', formats).name).toBe('raw');
    writeFileSync(tmp.file('plain'), Buffer.alloc(16));
    expect((await detectFormat(tmp.file('plain'), formats)).name).toBe('raw');
  });

  it('the object-store record claims s3:// specs: no file is read, a backing\'s default name does not apply', async () => {
    expect((await detectFormat('s3://golden/debian-12@20261202T141500Z-1a2b3c4d')).name).toBe('s3');
    expect(backingRecord('s3://golden/debian-12', 'raw').name).toBe('s3');
  });
});
