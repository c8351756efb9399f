/**
 * `cownbd convert` with qemu-img as the oracle: flattening a cow chain to raw is checked
 * with `qemu-img compare` against uml_moo's merge (and `qemu-img info` for size and
 * sparseness); converting into new cow / add-cow overlays is checked by serving the NEW
 * overlay with the real server and running `qemu-img compare` against the source.
 */
import { openSync, closeSync, writeSync, statSync, truncateSync, utimesSync, existsSync, readdirSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CONVERT_SCHEMA } from '../../src/tools/json-schemas.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliJson, cliSpawn, expectSchema, makeBacking, MTIME, pokeSectors, run, runOk, v3Geometry } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasTools = requireTool('qemu-img') && requireTool('uml_mkcow') && requireTool('uml_moo');
let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('tool-convert-');
});
afterEach(() => tmp.cleanup());

function qemuCompare(a: string, b: string): void {
  const r = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b]);
  expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
}

/** 8 MiB sparse base with a few data areas; a cow with writes (some zero) over it. */
function chain(): { base: string; cow: string } {
  const size = 8 * MiB;
  const base = tmp.file('base.img');
  const fd = openSync(base, 'w');
  writeSync(fd, Buffer.alloc(64 * 1024, 0x61), 0, 64 * 1024, MiB);
  writeSync(fd, Buffer.alloc(4096, 0x62), 0, 4096, 5 * MiB);
  closeSync(fd);
  truncateSync(base, size);
  utimesSync(base, MTIME, MTIME);
  const cow = tmp.file('ov.cow');
  runOk('uml_mkcow', [cow, base]);
  pokeSectors(cow, v3Geometry(size), { 0: 0xee, 2048: 0, 2049: 0, 3000: 0, 4000: 0x11, 10240: 0x22, 16383: 0x33 });
  return { base, cow };
}

describe.runIf(hasTools)('convert', () => {
  it('-O raw flattens a cow chain: qemu-img compare equals uml_moo, output is sparse', () => {
    const { cow } = chain();
    runOk('uml_moo', [cow, tmp.file('moo.img')]);
    const r = cliJson(['convert', cow, '-O', 'raw', tmp.file('flat.img')]);
    expectSchema(CONVERT_SCHEMA, r);
    expect(r).toMatchObject({ outputFormat: 'raw', virtualSize: 8 * MiB });
    qemuCompare(tmp.file('flat.img'), tmp.file('moo.img'));
    const info = JSON.parse(runOk('qemu-img', ['info', '--output=json', tmp.file('flat.img')]));
    expect(info['virtual-size']).toBe(8 * MiB);
    expect(info['actual-size']).toBeLessThan(512 * 1024); // zero ranges are holes
    expect(readdirSync(tmp.path).some((f) => f.includes('cownbd-part'))).toBe(false);
  });

  it('-O cow onto the same base keeps only the sectors that differ; the served result equals the source', async () => {
    const { base, cow } = chain();
    runOk('uml_moo', [cow, tmp.file('flat.img')]);
    const r = cliJson(['convert', tmp.file('flat.img'), '-O', 'cow', tmp.file('copy.cow'), '--backing', base]);
    expectSchema(CONVERT_SCHEMA, r);
    // Sector 3000 was written with zeros over a hole of the base: no difference, not copied.
    // Sectors 2048/2049 are zeros over base data (0x61): copied.
    expect(r.bytesWritten).toBe(6 * 512);
    expect(cliJson(['info', tmp.file('copy.cow')]).cow.allocatedSectors).toBe(6);
    expect(cli(['check', tmp.file('copy.cow')]).status).toBe(0);
    const srv = await startServer([tmp.file('copy.cow'), '--read-only']);
    try {
      const q = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srv.uri(), tmp.file('flat.img')]);
      expect(q.status, q.stdout + q.stderr).toBe(0);
    } finally {
      await srv.stop();
    }
  });

  it('-O add-cow with and without a backing file; the served result equals the source', async () => {
    const { base, cow } = chain();
    runOk('uml_moo', [cow, tmp.file('flat.img')]);
    const withBacking = cliJson(['convert', cow, '-O', 'add-cow', tmp.file('a.add-cow'), '--backing', base, '--cluster-size', '4K']);
    expectSchema(CONVERT_SCHEMA, withBacking);
    const infoA = cliJson(['info', tmp.file('a.add-cow')]);
    expect(infoA.addCow.allocatedClusters).toBe(5); // sectors 0, 2048-2049, 4000, 10240, 16383 → 5 distinct 4K clusters
    cliJson(['convert', cow, '-O', 'add-cow', tmp.file('b.add-cow'), '--image', 'b-data.img']);
    const infoB = cliJson(['info', tmp.file('b.add-cow')]);
    expect(infoB.addCow.allAllocated).toBe(true);
    expect(infoB.addCow.imageFile.actualSize).toBeLessThan(MiB); // sparse image file
    for (const f of ['a.add-cow', 'b.add-cow']) {
      const srv = await startServer([tmp.file(f), '--read-only']);
      try {
        const q = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srv.uri(), tmp.file('flat.img')]);
        expect(q.status, `${f}: ${q.stdout}${q.stderr}`).toBe(0);
      } finally {
        await srv.stop();
      }
    }
  });

  it('refuses bad requests with clear messages and leaves no partial files', () => {
    const { base, cow } = chain();
    makeBacking(tmp.file('small.img'), MiB);
    let r = cli(['convert', cow, '-O', 'cow', tmp.file('x.cow'), '--backing', tmp.file('small.img')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/source virtual size 8388608 differs from the overlay's size 1048576/);
    expect(existsSync(tmp.file('x.cow'))).toBe(false);
    r = cli(['convert', cow, '-O', 'cow', tmp.file('x.cow')]);
    expect(r.stderr).toMatch(/-O cow needs --backing/);
    r = cli(['convert', cow, '-O', 'raw', base]);
    expect(r.stderr).toMatch(/exists \(use --force/);
    expect(statSync(base).size).toBe(8 * MiB);
  });

  it('SIGINT during convert exits 130 and removes the partial output', async () => {
    const size = 160 * MiB;
    const base = tmp.file('data.img');
    const fd = openSync(base, 'w');
    const chunk = Buffer.alloc(4 * MiB, 0x5a);
    for (let o = 0; o < size; o += chunk.length) writeSync(fd, chunk, 0, chunk.length, o);
    closeSync(fd);
    utimesSync(base, MTIME, MTIME);
    runOk('uml_mkcow', [tmp.file('d.cow'), base]);
    const child = cliSpawn(['convert', tmp.file('d.cow'), '-O', 'raw', tmp.file('out.img'), '-q']);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const part = tmp.file('.out.img.cownbd-part');
    const t0 = Date.now();
    while (!existsSync(part) && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 2));
    child.kill('SIGINT');
    expect(await exited, stderr).toBe(130);
    expect(stderr).toMatch(/interrupted/);
    expect(existsSync(part)).toBe(false);
    expect(existsSync(tmp.file('out.img'))).toBe(false);
  });
});
