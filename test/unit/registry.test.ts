/**
 * The format registry: magic-only detection of named images (raw fallback), explicit
 * names, and a record that claims specs by their form (the way an object-store base will
 * be added) taking precedence over magic and over a backing's default format name.
 */
import { writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FormatRecord } from '../../src/formats/format-record.js';
import { FOREIGN_FORMATS, type ForeignFormat } from '../../src/formats/foreign-magic.js';
import { backingRecord, detectFormat, ForeignImageError, FORMAT_NAMES, FORMATS, formatByName, namedBackingFormat, probeImage } from '../../src/formats/registry.js';
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

  it('a foreign magic is refused for named images and for backings the operator names without a format; an explicit one is kept', async () => {
    const qcow2 = Buffer.alloc(4096);
    qcow2.write('QFI\xfb', 0, 'latin1');
    qcow2.writeUInt32BE(3, 4);
    writeFileSync(tmp.file('vm.qcow2'), qcow2);
    const refused = await detectFormat(tmp.file('vm.qcow2')).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(ForeignImageError);
    expect((refused as ForeignImageError).foreign.name).toBe('qcow2');
    expect((refused as Error).message).toMatch(/'.*vm\.qcow2' is a qcow2 .*give -f raw if/);
    expect((await probeImage(tmp.file('vm.qcow2'))).foreign?.name).toBe('qcow2');
    await expect(namedBackingFormat(tmp.file('vm.qcow2'), undefined, '--base-format raw')).rejects.toThrow(/give --base-format raw if/);
    expect(await namedBackingFormat(tmp.file('vm.qcow2'), 'raw', '--base-format raw')).toBe('raw');
    // A backing cownbd cannot read yet is left to the open that follows (its own message).
    expect(await namedBackingFormat(tmp.file('missing.img'), undefined, '-F raw')).toBe('raw');
    // A cow magic does not make an operator-named backing cow: raw unless told (as before).
    writeFileSync(tmp.file('v3.cow'), Buffer.from('4f4f4f4d00000003', 'hex'));
    expect(await namedBackingFormat(tmp.file('v3.cow'), undefined, '-F raw')).toBe('raw');
  });

  it('a foreign format marked read-only is served by the record of its name (how qcow2 joins: one line in foreign-magic.ts)', async () => {
    const qcow2Record: FormatRecord = { ...claiming, name: 'qcow2', claims: undefined };
    const table: ForeignFormat[] = FOREIGN_FORMATS.map((f) => (f.name === 'qcow2' ? { ...f, support: 'read-only' } : f));
    const qcow2 = Buffer.alloc(4096);
    qcow2.write('QFI\xfb', 0, 'latin1');
    qcow2.writeUInt32BE(2, 4);
    writeFileSync(tmp.file('golden.qcow2'), qcow2);
    const formats = [...FORMATS.filter((f) => f.name !== 'qcow2'), qcow2Record];
    expect(await detectFormat(tmp.file('golden.qcow2'), formats, table)).toBe(qcow2Record);
    expect(await namedBackingFormat(tmp.file('golden.qcow2'), undefined, '--base-format raw', table)).toBe('qcow2');
    // The others stay refused.
    const vdi = Buffer.alloc(4096);
    vdi.writeUInt32LE(0xbeda107f, 0x40);
    writeFileSync(tmp.file('disk.vdi'), vdi);
    await expect(detectFormat(tmp.file('disk.vdi'), formats, table)).rejects.toThrow(/VDI \(VirtualBox\)/);
  });
});
