/**
 * `cownbd map` must tell the same story as the server over NBD: the file is served with
 * the real `cownbd serve` and read with the real `nbdinfo --map` (base:allocation) and
 * `nbdinfo --map=qemu:allocation-depth`; both views are merged into maximal runs and
 * compared with map --json projected onto the same key.
 */
import { openSync, closeSync, writeSync, utimesSync, truncateSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAP_SCHEMA } from '../../src/tools/json-schemas.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliJson, cliOk, expectSchema, MTIME, pokeSectors, runOk, v3Geometry } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasTools = requireTool('nbdinfo') && requireTool('uml_mkcow');
let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('tool-map-');
});
afterEach(() => tmp.cleanup());

interface Run {
  offset: number;
  length: number;
  value: number;
}

function merge(runs: Run[]): Run[] {
  const out: Run[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last && last.value === r.value && last.offset + last.length === r.offset) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

function nbdinfoMap(uri: string, context?: string): Run[] {
  const args = ['--json', context ? `--map=${context}` : '--map', uri];
  const r = runOk('nbdinfo', args);
  return merge((JSON.parse(r) as Array<{ offset: number; length: number; type: number }>).map((e) => ({ offset: e.offset, length: e.length, value: e.type })));
}

/** Sparse base with a little data, a cow over it with some sectors, served and mapped. */
function sparseBase(size: number): string {
  const base = tmp.file('base.img');
  const fd = openSync(base, 'w');
  writeSync(fd, Buffer.alloc(4096, 0x61), 0, 4096, 65536);
  writeSync(fd, Buffer.alloc(8192, 0x62), 0, 8192, size - 8192 - 4096);
  closeSync(fd);
  truncateSync(base, size);
  utimesSync(base, MTIME, MTIME);
  return base;
}

async function compareWithServer(file: string, serveArgs: string[] = []): Promise<void> {
  const m = cliJson(['map', file, ...serveArgs]);
  expectSchema(MAP_SCHEMA, m);
  expect(m.extents.reduce((n: number, e: { length: number }) => n + e.length, 0)).toBe(m.virtualSize);
  const srv = await startServer([file, '--read-only', ...serveArgs]);
  try {
    const depth = nbdinfoMap(srv.uri(), 'qemu:allocation-depth');
    const alloc = nbdinfoMap(srv.uri());
    type E = { start: number; length: number; depth: number; hole: boolean; zero: boolean };
    const ours = (value: (e: E) => number): Run[] => merge((m.extents as E[]).map((e) => ({ offset: e.start, length: e.length, value: value(e) })));
    expect(ours((e) => e.depth)).toEqual(depth);
    expect(ours((e) => (e.hole ? 1 : 0) | (e.zero ? 2 : 0))).toEqual(alloc);
  } finally {
    await srv.stop();
  }
}

describe.runIf(hasTools)('map agrees with NBD block status', () => {
  it('cow over a sparse raw file', async () => {
    const size = 2 * MiB;
    const base = sparseBase(size);
    const cow = tmp.file('ov.cow');
    runOk('uml_mkcow', [cow, base]);
    pokeSectors(cow, v3Geometry(size), { 0: 1, 1: 1, 2: 0x33, 500: 0x33, 4000: 0, 4095: 7 });
    await compareWithServer(cow);
    const text = cliOk(['map', cow]);
    expect(text).toMatch(/Depth/);
  });

  it('add-cow over cow over raw (depths 1..3, plus depth-0 zeros past a short backing)', async () => {
    const size = 2 * MiB;
    const base = sparseBase(size);
    const cow = tmp.file('mid.cow');
    runOk('uml_mkcow', [cow, base]);
    pokeSectors(cow, v3Geometry(size), { 300: 0x44, 301: 0x44 });
    const ac = tmp.file('top.add-cow');
    // The add-cow image is larger than its backing: the extra 64 KiB is held by no layer (depth 0).
    cliOk(['create', '-f', 'add-cow', ac, '--backing', cow, '--backing-format', 'cow', '--image', 'top.img', '--cluster-size', '4K', '--size', String(size + 65536)]);
    const img = openSync(tmp.file('top.img'), 'r+');
    writeSync(img, Buffer.alloc(4096, 0x55), 0, 4096, 8 * 4096);
    closeSync(img);
    const meta = openSync(ac, 'r+');
    writeSync(meta, Buffer.from([0x00, 0x01]), 0, 2, 4096); // cluster 8
    closeSync(meta);
    const m = cliJson(['map', ac]);
    const depths = new Set(m.extents.map((e: { depth: number }) => e.depth));
    expect([...depths].sort()).toEqual([0, 1, 2, 3]);
    await compareWithServer(ac);
  });

  it('fails clearly when the backing file no longer matches (unless --ignore-mtime)', () => {
    const base = sparseBase(MiB);
    const cow = tmp.file('ov.cow');
    runOk('uml_mkcow', [cow, base]);
    utimesSync(base, MTIME + 5, MTIME + 5);
    const r = cli(['map', cow]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/mtime mismatch/);
    expect(cliJson(['map', cow, '--ignore-mtime']).virtualSize).toBe(MiB);
  });
});
