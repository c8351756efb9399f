/**
 * `cownbd commit` against the real uml_moo as the oracle: new-file mode (`uml_moo COW OUT`)
 * and in-place mode (`uml_moo -d -b BASE COW`), on a 1 MiB and an odd-sized (1,000,000
 * bytes) backing file; add-cow commits; the crash journal (simulated crash + resume) and
 * SIGINT (exit 130, journal left, re-run completes).
 */
import { copyFileSync, existsSync, readFileSync, statSync, writeFileSync, truncateSync, utimesSync, openSync, closeSync, writeSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { COMMIT_SCHEMA } from '../../src/tools/json-schemas.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliJson, cliOk, cliSpawn, expectSchema, makeBacking, MTIME, pokeSectors, runOk, v3Geometry } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasMoo = requireTool('uml_moo') && requireTool('uml_mkcow');
let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('tool-commit-');
});
afterEach(() => tmp.cleanup());

const bytes = (f: string): Buffer => readFileSync(f);

/** uml_mkcow overlay on a fresh backing of `size` bytes with a mix of writes (incl. zero sectors and the last sector). */
function scenario(size: number): { base: string; cow: string; last: number } {
  const base = makeBacking(tmp.file('base.img'), size);
  const cow = tmp.file('ov.cow');
  runOk('uml_mkcow', [cow, base]);
  const last = Math.ceil(size / 512) - 1;
  pokeSectors(cow, v3Geometry(size), { 0: 0xee, 9: 0xee, 10: 0x00, 100: 0x00, 300: 0xdd, [last - 1]: 0xc1, [last]: 0xc2 });
  return { base, cow, last };
}

describe.runIf(hasMoo)('commit -o (new file) vs uml_moo', () => {
  it.each([MiB, 1_000_000])('backing of %i bytes: --uml-moo output is byte-identical to uml_moo; the default keeps the partial last sector', (size) => {
    const { cow } = scenario(size);
    runOk('uml_moo', [cow, tmp.file('moo.img')]);
    const r = cliJson(['commit', cow, '-o', tmp.file('compat.img'), '--uml-moo']);
    expectSchema(COMMIT_SCHEMA, r);
    expect(r).toMatchObject({ mode: 'new-file', format: 'cow', length: Math.floor(size / 512) * 512 });
    expect(bytes(tmp.file('compat.img')).equals(bytes(tmp.file('moo.img')))).toBe(true);

    cliOk(['commit', cow, '-o', tmp.file('ours.img'), '-q']);
    const ours = bytes(tmp.file('ours.img'));
    expect(ours.length).toBe(size); // exactly the backing file's size
    expect(ours.subarray(0, Math.floor(size / 512) * 512).equals(bytes(tmp.file('moo.img')))).toBe(true);
    if (size % 512 !== 0) {
      // uml_moo drops the partial last sector (docs/cow-format.md#c9); we keep its bytes inside the backing size.
      expect(ours.subarray(Math.floor(size / 512) * 512).every((b) => b === 0xc2)).toBe(true);
      cliOk(['commit', cow, '-o', tmp.file('virt.img'), '--output-size', 'virtual', '-q']);
      expect(statSync(tmp.file('virt.img')).size).toBe(Math.ceil(size / 512) * 512);
    }
    // Sparse: zero sectors are holes, like uml_moo's.
    expect(statSync(tmp.file('ours.img')).blocks * 512).toBeLessThanOrEqual(statSync(tmp.file('moo.img')).blocks * 512 + 4096);
  });

  it('refuses to overwrite an existing output without --force, and refuses a raw image', () => {
    const { cow, base } = scenario(MiB);
    writeFileSync(tmp.file('exists.img'), 'x');
    const r = cli(['commit', cow, '-o', tmp.file('exists.img')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/exists.*--force/);
    expect(cli(['commit', base, '-o', tmp.file('x.img')]).stderr).toMatch(/raw image has no backing file/);
    expect(cli(['commit', cow]).stderr).toMatch(/exactly one of --to .* or -o/);
  });
});

describe.runIf(hasMoo)('commit --to (in place) vs uml_moo -d', () => {
  it.each([MiB, 1_000_000])('backing of %i bytes: same backing bytes as uml_moo -d (uml-moo mode), overlay stays valid', (size) => {
    const { cow, base } = scenario(size);
    copyFileSync(base, tmp.file('moo-base.img'));
    utimesSync(tmp.file('moo-base.img'), MTIME, MTIME);
    runOk('uml_moo', ['-d', '-b', tmp.file('moo-base.img'), cow]);

    const before = cliOk(['commit', cow, '-o', tmp.file('view-before.img'), '-q']);
    void before;
    const r = cliJson(['commit', cow, '--to', base, '--uml-moo']);
    expectSchema(COMMIT_SCHEMA, r);
    expect(r).toMatchObject({ mode: 'in-place', resumed: false, headerUpdated: true });
    expect(bytes(base).equals(bytes(tmp.file('moo-base.img')))).toBe(true);
    expect(statSync(base).size).toBe(size); // never extended
    expect(existsSync(`${cow}.commit-journal`)).toBe(false);
    // The header mtime follows the backing, so the overlay still opens and shows the same view.
    expect(cli(['check', cow]).status).toBe(0);
    cliOk(['commit', cow, '-o', tmp.file('view-after.img'), '-q']);
    expect(bytes(tmp.file('view-after.img')).equals(bytes(tmp.file('view-before.img')))).toBe(true);
  });

  it('default mode also commits the partial last sector inside the backing size', () => {
    const { cow, base } = scenario(1_000_000);
    cliOk(['commit', cow, '--to', base, '-q']);
    const b = bytes(base);
    expect(b.length).toBe(1_000_000);
    expect(b.subarray(999_936).every((x) => x === 0xc2)).toBe(true);
  });

  it('--no-update-header leaves the overlay like uml_moo -d does (mtime mismatch afterwards)', () => {
    const { cow, base } = scenario(MiB);
    utimesSync(base, MTIME, MTIME);
    cliOk(['commit', cow, '--to', base, '--no-update-header', '-q']);
    const r = cli(['check', cow]);
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/mtime mismatch/);
  });

  it('refuses a --to file that does not match the overlay (like uml_moo -b)', () => {
    const { cow } = scenario(MiB);
    makeBacking(tmp.file('other.img'), MiB + 512);
    const r = cli(['commit', cow, '--to', tmp.file('other.img')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Size mismatch \(1048576 vs 1049088\)/);
  });

  it('crash safety: a simulated crash mid-commit is reported by check/info and completed by a re-run', () => {
    const { cow, base } = scenario(MiB);
    const reference = tmp.file('ref.img');
    copyFileSync(base, reference);
    utimesSync(reference, MTIME, MTIME);
    runOk('uml_moo', ['-d', '-b', reference, cow]);
    // State after a crash: journal written, only part of the overlay copied into the backing.
    writeFileSync(
      `${cow}.commit-journal`,
      JSON.stringify({ version: 1, tool: 'cownbd commit', overlay: cow, overlayFormat: 'cow', target: base, targetFormat: 'raw', expectedSize: MiB, headerMtime: MTIME, started: new Date().toISOString() }),
    );
    const fd = openSync(base, 'r+');
    writeSync(fd, Buffer.alloc(512, 0xee), 0, 512, 0);
    closeSync(fd);
    const chk = cli(['check', cow, '--json']);
    expect(chk.status).toBe(2);
    expect(JSON.parse(chk.stdout).findings.map((f: { class: string }) => f.class)).toContain('commit-incomplete');
    expect(cliJson(['info', cow]).commitInProgress).toMatchObject({ target: base });
    // Another target is refused while the journal exists.
    expect(cli(['commit', cow, '--to', reference]).stderr).toMatch(/interrupted commit into .* must be finished first/);
    const r = cliJson(['commit', cow, '--to', base, '--uml-moo']);
    expect(r.resumed).toBe(true);
    expect(bytes(base).equals(bytes(reference))).toBe(true);
    expect(existsSync(`${cow}.commit-journal`)).toBe(false);
    expect(cli(['check', cow]).status).toBe(0);
  });

  it('SIGINT stops at a safe point with exit 130, leaves the journal, and a re-run completes', async () => {
    // 192 MiB: every sector allocated in the overlay (data area all zeros) over a non-zero base,
    // so the commit has to rewrite the whole backing file: long enough to interrupt.
    const size = 192 * MiB;
    const base = tmp.file('big.img');
    const fdb = openSync(base, 'w');
    const chunk = Buffer.alloc(4 * MiB, 0x5a);
    for (let o = 0; o < size; o += chunk.length) writeSync(fdb, chunk, 0, chunk.length, o);
    closeSync(fdb);
    utimesSync(base, MTIME, MTIME);
    const cow = tmp.file('big.cow');
    runOk('uml_mkcow', [cow, base]);
    const g = v3Geometry(size);
    const fdc = openSync(cow, 'r+');
    writeSync(fdc, Buffer.alloc(g.bitmapLength, 0xff), 0, g.bitmapLength, g.bitmapOffset);
    closeSync(fdc);

    const child = cliSpawn(['commit', cow, '--to', base, '-q']);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const t0 = Date.now();
    while (!existsSync(`${cow}.commit-journal`) && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 2));
    child.kill('SIGINT');
    const code = await exited;
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(/interrupted: .*run the same commit again/);
    expect(existsSync(`${cow}.commit-journal`)).toBe(true);
    expect(cli(['check', cow]).status).toBe(2);
    const r = cliJson(['commit', cow, '--to', base]);
    expect(r.resumed).toBe(true);
    const b = bytes(base);
    expect(b.length).toBe(size);
    expect(b.every((x) => x === 0)).toBe(true);
    expect(cli(['check', cow]).status).toBe(0);
  });
});

describe('commit of add-cow overlays', () => {
  it('merges allocated clusters into the backing in place, and into a new file', () => {
    const base = makeBacking(tmp.file('base.img'), MiB);
    const ac = tmp.file('o.add-cow');
    cliOk(['create', '-f', 'add-cow', ac, '--backing', base, '--image', 'o.img', '--cluster-size', '4K']);
    // Write clusters 2 and 10 into the image and set their bits (bitmap at 4096).
    const img = openSync(tmp.file('o.img'), 'r+');
    writeSync(img, Buffer.alloc(4096, 0x42), 0, 4096, 2 * 4096);
    writeSync(img, Buffer.alloc(4096, 0x43), 0, 4096, 10 * 4096);
    closeSync(img);
    const meta = openSync(ac, 'r+');
    writeSync(meta, Buffer.from([0x04, 0x04]), 0, 2, 4096);
    closeSync(meta);
    const expected = bytes(base);
    expected.fill(0x42, 2 * 4096, 3 * 4096);
    expected.fill(0x43, 10 * 4096, 11 * 4096);
    const r = cliJson(['commit', ac, '-o', tmp.file('flat.img')]);
    expectSchema(COMMIT_SCHEMA, r);
    expect(bytes(tmp.file('flat.img')).equals(expected)).toBe(true);
    const r2 = cliJson(['commit', ac, '--to', base]);
    expect(r2).toMatchObject({ format: 'add-cow', bytesWritten: 8192 });
    expect(bytes(base).equals(expected)).toBe(true);
  });
});

void truncateSync;
