/**
 * `cownbd check [--repair]`: one test per finding class, with an injected corruption,
 * the qemu-img exit codes (0 clean, 2 corruption, 3 leaks/cosmetic, 1 could not check),
 * and --repair fixing only what is safe (data sectors and backing files untouched).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, truncateSync, utimesSync, writeFileSync, unlinkSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CHECK_SCHEMA } from '../../src/tools/json-schemas.js';
import { writeCraftedAddCow } from '../helpers/add-cow-craft.js';
import { writeCraftedCow } from '../helpers/cow-craft.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { offlineSnapshot } from '../../src/control/snapshot.js';
import { CLI_PATH } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliJson, expectSchema, makeBacking, MTIME, pokeBytes, pokeSectors, runOk, v3Geometry } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasMkcow = requireTool('uml_mkcow');
let tmp: TempDir;
let base: string;
let cow: string;
beforeEach(() => {
  tmp = makeTempDir('tool-check-');
  base = makeBacking(tmp.file('base.img'), MiB);
  cow = tmp.file('ov.cow');
});
afterEach(() => tmp.cleanup());

const hash = (f: string): string => createHash('sha256').update(readFileSync(f)).digest('hex');

function mkcow(sectors: Record<number, number> = { 1: 0xee, 100: 0xdd }): void {
  runOk('uml_mkcow', [cow, base]);
  pokeSectors(cow, v3Geometry(MiB), sectors);
}

function check(file: string, expectedStatus: number, extra: string[] = []) {
  const r = cliJson(['check', file, ...extra], { status: expectedStatus });
  expectSchema(CHECK_SCHEMA, r);
  expect(r.exitCode).toBe(expectedStatus);
  return r as { result: string; findings: Array<{ class: string; severity: string; message: string }>; repaired: Array<{ class: string }> };
}

/** Merged view the server would export, via the tool itself (commit -o), for "data untouched" checks. */
function view(file: string): string {
  const out = tmp.file(`view-${Math.random().toString(36).slice(2)}.img`);
  expect(cli(['commit', file, '-o', out, '-q']).status).toBe(0);
  const h = hash(out);
  unlinkSync(out);
  return h;
}

describe.runIf(hasMkcow)('check on cow files', () => {
  it('a fresh uml_mkcow file with writes is clean (exit 0); text output too', () => {
    mkcow();
    const r = check(cow, 0);
    expect(r.result).toBe('clean');
    const t = cli(['check', cow]);
    expect(t.status).toBe(0);
    expect(t.stdout).toMatch(/No errors were found/);
  });

  it('header: bad alignment is corruption (exit 2), not repairable', () => {
    mkcow();
    pokeBytes(cow, 24, [0, 0, 0, 0]); // alignment 0
    const r = check(cow, 2);
    expect(r.findings[0]).toMatchObject({ class: 'header', severity: 'corruption' });
    expect(r.findings[0]!.message).toMatch(/alignment 0/);
  });

  it('tail-bits: bits past the last sector are a leak (exit 3); --repair clears them', () => {
    // 1001 sectors: bitmap 126 bytes, only bit 0 of the last byte is used
    const b2 = makeBacking(tmp.file('b2.img'), 1001 * 512);
    runOk('uml_mkcow', [cow, b2]);
    const bm = v3Geometry(1001 * 512);
    pokeBytes(cow, bm.bitmapOffset + 125, [0xfe]); // bits 1001..1007: past the end
    const before = view(cow);
    const r = check(cow, 3);
    expect(r.findings.map((f) => f.class)).toEqual(['tail-bits']);
    const fixed = check(cow, 0, ['--repair']);
    expect(fixed.repaired.map((f) => f.class)).toEqual(['tail-bits']);
    expect(readFileSync(cow)[bm.bitmapOffset + 125]).toBe(0);
    expect(view(cow)).toBe(before);
  });

  it('padding: garbage between bitmap and data area is a leak; --repair zeroes it; garbage after the path NUL is only a note', () => {
    mkcow();
    const g = v3Geometry(MiB);
    pokeBytes(cow, g.bitmapOffset + g.bitmapLength + 10, [0x55, 0x66]);
    pokeBytes(cow, 32 + base.length + 5, [0x77]); // after the path's NUL (UML leaves memory there)
    const before = view(cow);
    const r = check(cow, 3);
    expect(r.findings.map((f) => `${f.class}/${f.severity}`).sort()).toEqual(['padding/info', 'padding/leak']);
    check(cow, 0, ['--repair']);
    const bytes = readFileSync(cow);
    expect(bytes[g.bitmapOffset + g.bitmapLength + 10]).toBe(0);
    expect(bytes[32 + base.length + 5]).toBe(0);
    expect(view(cow)).toBe(before);
  });

  it('file-length: a short file without affected sectors is a leak (repair extends); with allocated sectors past EOF it is corruption', () => {
    mkcow({ 1: 0xee, 2000: 0xdd });
    const g = v3Geometry(MiB);
    truncateSync(cow, g.dataOffset + 1500 * 512);
    const r = check(cow, 2);
    expect(r.findings[0]).toMatchObject({ class: 'file-length', severity: 'corruption' });
    expect(r.findings[0]!.message).toMatch(/1 allocated sector/);
    // Without the sector past EOF it is only cosmetic, and --repair restores uml_mkcow's length.
    unlinkSync(cow); // uml_mkcow -f does not truncate: start from a fresh file
    runOk('uml_mkcow', [cow, base]);
    pokeSectors(cow, g, { 1: 0xee });
    truncateSync(cow, g.dataOffset + 1500 * 512);
    expect(check(cow, 3).findings[0]).toMatchObject({ class: 'file-length', severity: 'leak' });
    check(cow, 0, ['--repair']);
    expect(statSync(cow).size).toBe(g.dataOffset + MiB);
    // Too long: bytes past the data area are leaked; --repair truncates.
    truncateSync(cow, g.dataOffset + MiB + 8192);
    expect(check(cow, 3).findings[0]!.message).toMatch(/exceeds the end of the data area/);
    check(cow, 0, ['--repair']);
    expect(statSync(cow).size).toBe(g.dataOffset + MiB);
  });

  it('lost-writes: v2 bits stored past bitmap_len by the rounding bug (docs/cow-format.md#c11) are corruption, and repair leaves them', () => {
    const b = makeBacking(tmp.file('b2049.img'), 2049 * 512);
    const v2 = tmp.file('v2.cow');
    writeCraftedCow(v2, { layout: 'v2', backingPath: b, size: 2049 * 512, mtime: MTIME, sectors: { 2040: 0x11 } });
    pokeBytes(v2, 4120 + 256, [0x01]); // UML's bit for sector 2048, past bitmap_len 256
    const r = check(v2, 2);
    expect(r.findings.map((f) => f.class)).toEqual(['lost-writes']);
    check(v2, 2, ['--repair']);
    expect(readFileSync(v2)[4120 + 256]).toBe(1);
  });

  it('backing: mtime mismatch is reported as corruption with UML wording; --repair never touches the backing', () => {
    mkcow();
    utimesSync(base, MTIME + 1, MTIME + 1);
    const h = hash(base);
    const r = check(cow, 2, ['--repair']);
    expect(r.findings[0]).toMatchObject({ class: 'backing' });
    expect(r.findings[0]!.message).toMatch(/mtime mismatch \(1643767322 vs 1643767323\)/);
    expect(hash(base)).toBe(h);
    expect(statSync(base).mtimeMs).toBe((MTIME + 1) * 1000);
  });

  it('commit-incomplete: a leftover commit journal is corruption', () => {
    mkcow();
    writeFileSync(`${cow}.commit-journal`, JSON.stringify({ version: 1, tool: 'cownbd commit', overlay: cow, overlayFormat: 'cow', target: base, targetFormat: 'raw', expectedSize: MiB, headerMtime: MTIME, started: '2026-01-01T00:00:00Z' }));
    const r = check(cow, 2);
    expect(r.findings[0]).toMatchObject({ class: 'commit-incomplete' });
    expect(r.findings[0]!.message).toMatch(/run `cownbd commit .* --to .*base\.img` again/);
  });

  it('could not check: a missing file is exit 1 with the reason', () => {
    const r = check(tmp.file('nope.cow'), 1);
    expect(r.result).toBe('error');
  });
});

describe('check on add-cow files', () => {
  function addcow(opts: Parameters<typeof writeCraftedAddCow>[1] = {}): string {
    const f = tmp.file('o.add-cow');
    writeFileSync(tmp.file('o.img'), Buffer.alloc(MiB));
    writeCraftedAddCow(f, { backingName: 'base.img', imageName: 'o.img', clusterBits: 12, virtualSize: MiB, ...opts });
    return f;
  }

  it('a crafted add-cow is clean', () => {
    check(addcow({ bitmap: Uint8Array.from([0x05]) }), 0);
  });

  it('header: unknown incompatible feature bits are corruption', () => {
    const r = check(addcow({ features: 4n }), 2);
    expect(r.findings[0]).toMatchObject({ class: 'header', severity: 'corruption' });
    expect(r.findings[0]!.message).toMatch(/incompatible features 0x4/);
  });

  it('names: image file and backing file being the same file is corruption', () => {
    const r = check(addcow({ backingName: 'o.img' }), 2);
    expect(r.findings.some((f) => f.class === 'names' && /same file/.test(f.message))).toBe(true);
  });

  it('image-file: a missing image file is corruption', () => {
    const f = addcow();
    unlinkSync(tmp.file('o.img'));
    expect(check(f, 2).findings[0]).toMatchObject({ class: 'image-file' });
  });

  it('tail bits and bitmap padding garbage are leaks that --repair clears', () => {
    // 1 MiB / 4 KiB = 256 clusters = 32 bitmap bytes; the file is 4096 + 4096 long.
    const f = addcow({ pokes: [[4096 + 40, 0x99]] });
    writeFileSync(tmp.file('o.img'), Buffer.alloc(MiB - 4096 * 3)); // 253 clusters → tail bits in byte 31
    pokeBytes(f, 4096 + 31, [0xe0]); // bits 253..255: past the last cluster
    const r = check(f, 3);
    expect(r.findings.map((x) => x.class).sort()).toEqual(['padding', 'tail-bits']);
    check(f, 0, ['--repair']);
    const bytes = readFileSync(f);
    expect(bytes[4096 + 31]).toBe(0);
    expect(bytes[4096 + 40]).toBe(0);
  });
});

it('raw images have no metadata to check: exit 63 like qemu-img (issue 15, defect 2)', () => {
  const r = cliJson<{ result: string; error: string }>(['check', base], { status: 63 });
  expect(r.result).toBe('unsupported');
  expect(r.error).toMatch(/raw image: this format has no metadata to check/);
});

it('a 0-byte NAME.cow is a broken overlay, not a clean raw image (issue 15, defect 2)', () => {
  const empty = tmp.file('vm1.cow');
  writeFileSync(empty, '');
  const r = check(empty, 2);
  expect(r.findings[0]!.message).toMatch(/named like a cow image but is empty \(0 bytes\).*delete it/);
  writeFileSync(empty, Buffer.alloc(4096, 7));
  expect(check(empty, 2).findings[0]!.message).toMatch(/has no cow magic \(4096 bytes, starting 0707070707070707\)/);
});

/** Run the CLI under python3 for its peak RSS (ru_maxrss of the child) and wall time. */
function measuredCli(args: string[]): { status: number | null; stdout: string; seconds: number; maxRssMiB: number } {
  const py = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const script = [
    'import json, resource, subprocess, sys, time',
    't = time.time()',
    'r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)',
    'print(json.dumps({"status": r.returncode, "stdout": r.stdout, "seconds": time.time() - t, "maxRssKiB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))',
  ].join('\n');
  const r = spawnSync(py, ['-c', script, process.execPath, CLI_PATH, ...args], { encoding: 'utf8', timeout: 120_000 });
  const doc = JSON.parse(r.stdout) as { status: number; stdout: string; seconds: number; maxRssKiB: number };
  return { status: doc.status, stdout: doc.stdout, seconds: doc.seconds, maxRssMiB: doc.maxRssKiB / 1024 };
}

it('a 1 MB v1 cow with one flipped bit in its size field: check names the field and value at once, in bounded memory (issue 26, item 15)', () => {
  const SIZE = 1_000_000; // not a multiple of 4096: the v1 rounding bug applies too (docs/cow-format.md#c11)
  const b = makeBacking(tmp.file('b1m.img'), SIZE);
  const v1 = tmp.file('flipped.cow');
  for (const bit of [42, 44, 46, 52]) {
    writeCraftedCow(v1, { layout: 'v1', backingPath: b, size: SIZE, mtime: MTIME, sectors: { 3: 0x5a } });
    const bytes = readFileSync(v1);
    bytes[268 + (bit >> 3)] ^= 1 << (bit & 7); // v1 size: u64 LE at 268
    writeFileSync(v1, bytes);
    const size = SIZE + 2 ** bit;
    const r = measuredCli(['check', '--json', v1]);
    expect(r.maxRssMiB, `bit ${bit}: peak RSS`).toBeLessThan(200);
    expect(r.seconds, `bit ${bit}: seconds`).toBeLessThan(2);
    expect(r.status, `bit ${bit}: ${r.stdout}`).toBe(2);
    const doc = JSON.parse(r.stdout) as { result: string; findings: Array<{ class: string; severity: string; message: string }> };
    expect(doc.result).toBe('corrupt');
    expect(doc.findings[0]).toMatchObject({ class: 'file-length', severity: 'corruption' });
    expect(doc.findings[0]!.message).toContain(`header's size field (${size} bytes`);
    expect(doc.findings.some((f) => f.class === 'backing' && f.message.includes(`Size mismatch (${size} vs ${SIZE})`))).toBe(true);
  }
});

it('the top of a live-snapshot chain is clean: its backing is a cow layer, compared by virtual size, not file length (issue 26, item 4)', async () => {
  const top = tmp.file('vm.cow');
  runOk(process.execPath, [CLI_PATH, 'create', '-f', 'cow', top, '--backing', base]);
  pokeSectors(top, v3Geometry(MiB), { 5: 0x11 });
  // The functions the admin API's snapshot uses for an overlay nobody has open (control/snapshot.ts).
  const first = (await offlineSnapshot(top, MiB)).frozen;
  pokeSectors(top, v3Geometry(MiB), { 6: 0x22 });
  const second = (await offlineSnapshot(top, MiB)).frozen;
  expect(statSync(second).size).toBeGreaterThan(MiB); // a cow file is longer than its disk
  for (const f of [top, second, first]) expect(check(f, 0).result, f).toBe('clean');
  expect(cli(['check', top]).stdout).toMatch(/No errors were found/);
  // The size is still checked: a layer below of another virtual size is a mismatch.
  const { mtimeMs } = statSync(second);
  runOk(process.execPath, [CLI_PATH, 'create', '-f', 'cow', second, '--backing', makeBacking(tmp.file('b2m.img'), 2 * MiB), '--force']);
  utimesSync(second, mtimeMs / 1000, mtimeMs / 1000);
  const bad = check(top, 2).findings.find((f) => f.class === 'backing');
  expect(bad?.message).toMatch(new RegExp(`Size mismatch \\(${MiB} vs ${2 * MiB}\\)`));
});
