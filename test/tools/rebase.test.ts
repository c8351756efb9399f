/**
 * `cownbd rebase`: safe mode keeps the overlay's view (checked with uml_moo as the oracle
 * for UML layouts, and with commit -o otherwise), the header is rewritten in the SAME
 * layout (v1/v2 never become v3, unlike UML's switch), --unsafe only edits the header,
 * and impossible requests are refused with the field and value named.
 */
import { readFileSync, utimesSync, unlinkSync, mkdirSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { REBASE_SCHEMA } from '../../src/tools/json-schemas.js';
import { writeCraftedCow, type CraftLayout } from '../helpers/cow-craft.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliJson, cliOk, expectSchema, makeBacking, MTIME, pokeSectors, runOk, v3Geometry } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasMoo = requireTool('uml_moo') && requireTool('uml_mkcow');
let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('tool-rebase-');
});
afterEach(() => tmp.cleanup());

/** A different base of the same size: sectors 0..999 equal to `base`, the rest different. */
function otherBase(base: string, name = 'new.img'): string {
  const b = readFileSync(base);
  b.fill(0x99, 1000 * 512);
  const f = tmp.file(name);
  writeFileSync(f, b);
  utimesSync(f, MTIME + 100, MTIME + 100);
  return f;
}

function moo(cow: string, out: string): Buffer {
  runOk('uml_moo', [cow, tmp.file(out)]);
  return readFileSync(tmp.file(out));
}

describe.runIf(hasMoo)('rebase cow', () => {
  it.each<CraftLayout>(['v3', 'v2', 'v1', 'v3-broken'])('safe rebase of a %s overlay keeps its layout and its view (uml_moo)', (layout) => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const cow = tmp.file('ov.cow');
    writeCraftedCow(cow, { layout, backingPath: base, size: MiB, mtime: MTIME, alignment: layout.startsWith('v3') ? 512 : undefined, sectors: { 3: 0xa1, 1500: 0xb1, 2047: 0xc1 } });
    const before = cliJson(['info', cow]);
    const viewBefore = moo(cow, 'before.img');
    const nb = otherBase(base);
    const r = cliJson(['rebase', cow, '--backing', nb]);
    expectSchema(REBASE_SCHEMA, r);
    // Sectors 1000..2047 whose bytes differ (fill != 0x99), minus the two already in the overlay.
    let differing = 0;
    for (let s = 1000; s < 2048; s++) if (((s * 7 + 1) & 0xff) !== 0x99 && s !== 1500 && s !== 2047) differing++;
    expect(r.bytesCopied).toBe(differing * 512);
    const after = cliJson(['info', cow]);
    expect(after.cow).toMatchObject({ layout, bitmapOffset: before.cow.bitmapOffset, dataOffset: before.cow.dataOffset, alignment: before.cow.alignment, mtime: MTIME + 100 });
    expect(after.backing).toMatchObject({ stored: nb, sizeCheck: 'ok', mtimeCheck: 'ok' });
    expect(moo(cow, 'after.img').equals(viewBefore)).toBe(true);
    expect(cli(['check', cow]).status).toBe(0);
  });

  it('--unsafe only rewrites the header (the old backing may be gone); the view then follows the new file', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const cow = tmp.file('ov.cow');
    runOk('uml_mkcow', [cow, base]);
    pokeSectors(cow, v3Geometry(MiB), { 5: 0x55 });
    const nb = otherBase(base);
    unlinkSync(base);
    const r = cliJson(['rebase', cow, '--backing', nb, '--unsafe']);
    expect(r).toMatchObject({ unsafe: true, bytesCopied: 0, oldBacking: base });
    const view = moo(cow, 'v.img');
    const expected = readFileSync(nb);
    expected.fill(0x55, 5 * 512, 6 * 512);
    expect(view.equals(expected)).toBe(true);
  });

  it('refuses a new backing of another size, and a path too long for a v1 header', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const cow = tmp.file('ov.cow');
    writeCraftedCow(cow, { layout: 'v1', backingPath: base, size: MiB, mtime: MTIME, sectors: { 1: 1 } });
    makeBacking(tmp.file('big.img'), 2 * MiB);
    let r = cli(['rebase', cow, '--backing', tmp.file('big.img')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/is 2097152 bytes; the v1 overlay needs a backing of 1048576 bytes/);
    const deep = tmp.file(`${'d'.repeat(120)}/${'e'.repeat(120)}`);
    mkdirSync(deep, { recursive: true });
    const nb = otherBase(base, `${'d'.repeat(120)}/${'e'.repeat(120)}/new.img`);
    const before = readFileSync(cow);
    r = cli(['rebase', cow, '--backing', nb]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/layout v1 allows 255/);
    expect(readFileSync(cow).equals(before)).toBe(true); // nothing copied before the refusal
  });
});

describe('rebase add-cow', () => {
  it('safe rebase copies differing clusters and stores a relative name relative to the .add-cow file', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const ac = tmp.file('o.add-cow');
    cliOk(['create', '-f', 'add-cow', ac, '--backing', base, '--image', 'o.img', '--cluster-size', '64K']);
    cliOk(['commit', ac, '-o', tmp.file('before.img'), '-q']);
    const nb = otherBase(base);
    const r = cliJson(['rebase', ac, '--backing', nb]);
    expectSchema(REBASE_SCHEMA, r);
    expect(r.storedBacking).toBe(nb); // absolute given → stored absolute
    // Byte 512000 lies in cluster 7; clusters 7..15 differ and are copied whole (the add-cow unit).
    expect(r.bytesCopied).toBe(9 * 65536);
    cliOk(['commit', ac, '-o', tmp.file('after.img'), '-q']);
    expect(readFileSync(tmp.file('after.img')).equals(readFileSync(tmp.file('before.img')))).toBe(true);
    const info = cliJson(['info', ac]);
    expect(info.backing).toMatchObject({ resolved: nb, format: 'raw' });
    expect(info.addCow.allocatedClusters).toBe(9);
    // A relative path given on the command line is stored relative to the .add-cow file.
    const r2 = cliJson(['rebase', ac, '--backing', 'new.img', '--unsafe'], { cwd: tmp.path });
    expect(r2.storedBacking).toBe('new.img');
  });
});
