/**
 * `cownbd create` and `cownbd info` through the real CLI: uml_mkcow files, every crafted
 * cow layout, add-cow, backing-chain listing, mismatch reporting, JSON schema.
 */
import { readFileSync, utimesSync, writeFileSync, truncateSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { INFO_CHAIN_SCHEMA, INFO_SCHEMA } from '../../src/tools/json-schemas.js';
import { writeCraftedCow, type CraftLayout } from '../helpers/cow-craft.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliJson, cliOk, expectSchema, makeBacking, MTIME, pokeSectors, runOk, v3Geometry } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasMkcow = requireTool('uml_mkcow');
let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('tool-info-');
});
afterEach(() => tmp.cleanup());

describe('create', () => {
  it.runIf(hasMkcow)('creates a cow byte-identical to uml_mkcow and refuses to overwrite without --force', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    runOk('uml_mkcow', [tmp.file('ref.cow'), base]);
    cliOk(['create', '-f', 'cow', tmp.file('ours.cow'), '--backing', base]);
    expect(readFileSync(tmp.file('ours.cow')).equals(readFileSync(tmp.file('ref.cow')))).toBe(true);
    const again = cli(['create', '-f', 'cow', tmp.file('ours.cow'), '--backing', base]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/exists.*force/);
    cliOk(['create', '-f', 'cow', tmp.file('ours.cow'), '--backing', base, '--force']);
    const badSize = cli(['create', '-f', 'cow', tmp.file('x.cow'), '--backing', base, '--size', '2M']);
    expect(badSize.status).toBe(1);
    expect(badSize.stderr).toMatch(/--size 2097152.*1048576/);
  });

  it('creates add-cow overlays with --image and --cluster-size, refusing overwrite', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    cliOk(['create', '-f', 'add-cow', tmp.file('o.add-cow'), '--backing', base, '--image', 'o.img', '--cluster-size', '4K']);
    const info = cliJson(['info', tmp.file('o.add-cow')]);
    expectSchema(INFO_SCHEMA, info);
    expect(info.addCow.clusterSize).toBe(4096);
    expect(info.addCow.imageFile.resolved).toBe(tmp.file('o.img'));
    expect(info.virtualSize).toBe(MiB);
    expect(cli(['create', '-f', 'add-cow', tmp.file('o.add-cow'), '--backing', base, '--image', 'o.img']).status).toBe(1);
  });

  it('a cow over an add-cow records the add-cow DEVICE size, not its metadata file length (issue 13)', () => {
    const base = makeBacking(tmp.file('base.img'), 4 * MiB);
    cliOk(['create', '-f', 'add-cow', tmp.file('x.add-cow'), '--backing', base, '--image', 'x.img']);
    const made = cli(['create', '-f', 'cow', tmp.file('c.cow'), '--backing', tmp.file('x.add-cow'), '--backing-format', 'add-cow']);
    expect(made.status, made.stderr).toBe(0);
    expect(made.stderr).toMatch(/cannot record the backing format/);
    const info = cliJson(['info', tmp.file('c.cow'), '--backing-format', 'add-cow']);
    expectSchema(INFO_SCHEMA, info);
    expect(info.cow.size).toBe(4 * MiB);
    expect(info.virtualSize).toBe(4 * MiB);
    expect(info.backing).toMatchObject({ format: 'add-cow', size: 4 * MiB, sizeCheck: 'ok' });
    // And it opens: the map walks cow → add-cow → raw.
    const map = cliJson(['map', tmp.file('c.cow'), '--backing-format', 'add-cow']);
    expect(map.virtualSize).toBe(4 * MiB);
    // convert -O cow -B add-cow works the same way (the size comes from the opened backing).
    cliOk(['convert', tmp.file('c.cow'), '-O', 'cow', tmp.file('d.cow'), '--backing', tmp.file('x.add-cow'), '-F', 'add-cow', '--source-backing-format', 'add-cow', '-q']);
    expect(cliJson(['info', tmp.file('d.cow'), '--backing-format', 'add-cow']).cow.size).toBe(4 * MiB);
  });
});

describe('add-cow finalize', () => {
  it('is a no-op on an ALL_ALLOCATED image and refuses while clusters are missing', () => {
    cliOk(['create', '-f', 'add-cow', tmp.file('solo.add-cow'), '--image', 'solo.img', '--size', '1M']);
    cliOk(['add-cow', 'finalize', tmp.file('solo.add-cow')]);
    const base = makeBacking(tmp.file('base.img'), MiB);
    cliOk(['create', '-f', 'add-cow', tmp.file('o.add-cow'), '--backing', base, '--image', 'o.img']);
    const r = cli(['add-cow', 'finalize', tmp.file('o.add-cow')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/cannot finalize: 16 of 16 clusters are not allocated/);
  });
});

describe('info', () => {
  it.runIf(hasMkcow)('describes a uml_mkcow v3 file: offsets, sizes, backing checks, allocation', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const cow = tmp.file('ov.cow');
    runOk('uml_mkcow', [cow, base]);
    pokeSectors(cow, v3Geometry(MiB), { 0: 0xee, 9: 0xee, 2047: 0xdd });
    const info = cliJson(['info', cow]);
    expectSchema(INFO_SCHEMA, info);
    expect(info).toMatchObject({
      format: 'cow',
      virtualSize: MiB,
      apparentSize: 12288 + MiB,
      allocatedBytes: 3 * 512,
      cow: { layout: 'v3', alignment: 4096, bitmapOffset: 8192, bitmapLength: 256, dataOffset: 12288, mtime: MTIME, size: MiB, allocatedSectors: 3 },
      backing: { stored: base, resolved: base, format: 'raw', sizeCheck: 'ok', mtimeCheck: 'ok', message: null },
      commitInProgress: null,
    });
    expect(info.actualSize).toBeLessThan(64 * 1024); // sparse: st_blocks, not st_size
    const text = cliOk(['info', cow]);
    expect(text).toMatch(/layout: v3/);
    expect(text).toMatch(/data offset: 12288/);
  });

  it.runIf(hasMkcow)('reports (does not fail on) a touched or resized backing file', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const cow = tmp.file('ov.cow');
    runOk('uml_mkcow', [cow, base]);
    utimesSync(base, MTIME + 10, MTIME + 10);
    let info = cliJson(['info', cow]);
    expect(info.backing).toMatchObject({ sizeCheck: 'ok', mtimeCheck: 'mismatch', actualMtime: MTIME + 10, expectedMtime: MTIME });
    expect(info.backing.message).toMatch(/mtime mismatch \(1643767322 vs 1643767332\)/);
    truncateSync(base, MiB + 512);
    info = cliJson(['info', cow]);
    expect(info.backing.sizeCheck).toBe('mismatch');
    expect(info.backing.message).toMatch(/Size mismatch \(1048576 vs 1049088\)/);
  });

  const layouts: Array<[CraftLayout, number, number, number]> = [
    ['v1', 280, 280, 1024],
    ['v2', 4120, 4120, 4608],
    ['v3-broken', 4136, 8192, 12288],
    ['qemu-i386', 1048, 1048, 1536],
    ['qemu-x86_64', 1056, 1056, 1536],
  ];
  it.each(layouts)('detects crafted layout %s (header %i, bitmap %i, data %i)', (layout, headerSize, bo, dOff) => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const cow = tmp.file(`${layout}.cow`);
    writeCraftedCow(cow, { layout, backingPath: base, size: MiB, mtime: MTIME, sectors: { 3: 0xa1, 1000: 0xb1 } });
    const info = cliJson(['info', cow]);
    expectSchema(INFO_SCHEMA, info);
    expect(info.cow).toMatchObject({ layout, headerSize, bitmapOffset: bo, dataOffset: dOff, allocatedSectors: 2 });
    expect(info.backing.mtimeCheck).toBe(layout.startsWith('qemu') ? 'not-applicable' : 'ok');
  });

  it('lists the backing chain (add-cow over cow over raw) as a JSON array', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const cow = tmp.file('mid.cow');
    writeCraftedCow(cow, { layout: 'v3', backingPath: base, size: MiB, mtime: MTIME, sectors: { 5: 1 } });
    cliOk(['create', '-f', 'add-cow', tmp.file('top.add-cow'), '--backing', cow, '--backing-format', 'cow', '--image', 'top.img']);
    const chain = cliJson(['info', '--backing-chain', tmp.file('top.add-cow')]);
    expectSchema(INFO_CHAIN_SCHEMA, chain);
    expect(chain.map((l: { format: string }) => l.format)).toEqual(['add-cow', 'cow', 'raw']);
    expect(chain[0].backing).toMatchObject({ format: 'cow', size: MiB, exists: true });
    expect(chain[2].filename).toBe(base);
  });

  it('fails with exit 1 and a message naming the field on an unreadable header', () => {
    const bad = tmp.file('bad.cow');
    const buf = Buffer.alloc(8192);
    buf.write('OOOM', 0, 'latin1');
    buf.writeUInt32BE(7, 4);
    writeFileSync(bad, buf);
    const r = cli(['info', bad]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/version 7 unsupported/);
  });
});
