/**
 * Interop: nbdinfo (libnbd 1.14) against cownbd. nbdinfo negotiates structured replies,
 * asks INFO [BLOCK_SIZE, NAME, DESCRIPTION], lists meta contexts, and with --map issues
 * BLOCK_STATUS over the whole export, so this file checks what the server ADVERTISES:
 * size, transmission flags, block-size constraints, names, descriptions, the export list,
 * and the base:allocation / qemu:allocation-depth maps of sparse images and overlays.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { makeOverlay, nbdinfo, nbdinfoJson, nbdinfoMap, mustSucceed, qemuIo, serveImage, TARGET, type MapEntry, type Target } from '../helpers/clients.js';

const MiB = 1024 * 1024;
const hasNbdinfo = requireTool('nbdinfo');
const onlyCownbd = TARGET === 'cownbd';

/** Sparse layout used throughout: two data islands, holes elsewhere (incl. a trailing hole). */
const SIZE = 64 * MiB;
const DATA: Array<[number, number]> = [
  [4 * MiB, 2 * MiB],
  [40 * MiB, 1 * MiB],
];

/** Ground truth for the map: merge nbdinfo's entries by type, then compare whole-range runs. */
function runs(entries: MapEntry[]): Array<{ offset: number; length: number; type: number }> {
  const out: Array<{ offset: number; length: number; type: number }> = [];
  for (const e of entries) {
    const last = out.at(-1);
    if (last && last.type === e.type && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length, type: e.type });
  }
  return out;
}

function expectContiguous(entries: MapEntry[], size: number): void {
  let pos = 0;
  for (const e of entries) {
    expect(e.offset, `map entry starts where the previous ended`).toBe(pos);
    expect(e.length).toBeGreaterThan(0);
    pos += e.length;
  }
  expect(pos, 'map covers the whole export exactly').toBe(size);
}

describe.runIf(hasNbdinfo)('nbdinfo', () => {
  let tmp: TempDir;
  let image: string;
  let target: Target;

  beforeAll(async () => {
    tmp = makeTempDir();
    image = createRawImage(tmp.file('sparse.raw'), SIZE, DATA, 7);
    target = await serveImage(image, { name: 'disk0', description: 'Interop disk 0' });
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it('--json reports size, name, description, flags and block sizes', async () => {
    const doc = await nbdinfoJson(target.uri);
    expect(doc.protocol).toBe('newstyle-fixed');
    expect(doc.structured).toBe(true);
    expect(doc.exports).toHaveLength(1);
    const e = doc.exports[0]!;
    expect(e['export-name']).toBe('disk0');
    expect(e.description).toBe('Interop disk 0');
    expect(e['export-size']).toBe(SIZE);
    expect(e.is_read_only).toBe(false);
    expect(e.contexts).toContain('base:allocation');
    expect({
      can_flush: e.can_flush,
      can_fua: e.can_fua,
      can_trim: e.can_trim,
      can_zero: e.can_zero,
      can_fast_zero: e.can_fast_zero,
      can_multi_conn: e.can_multi_conn,
      can_cache: e.can_cache,
      can_df: e.can_df,
    }).toEqual({
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_fast_zero: true,
      // qemu-nbd only advertises multi-conn with --shared>1 AND is conservative; cownbd shares one device per export.
      can_multi_conn: onlyCownbd ? true : e.can_multi_conn,
      can_cache: true,
      can_df: true,
    });
    expect([e.block_size_minimum, e.block_size_preferred, e.block_size_maximum]).toEqual([1, 4096, 32 * MiB]);
  });

  it('plain-text output agrees with --json (content detection reads the disk)', async () => {
    const r = mustSucceed(await nbdinfo([target.uri]));
    expect(r.stdout).toContain('export="disk0"');
    expect(r.stdout).toMatch(/export-size: 67108864 \(64M\)/);
    expect(r.stdout).toContain('description: Interop disk 0');
  });

  it('--map reports holes as hole,zero and data as data', async () => {
    const map = await nbdinfoMap(target.uri);
    expectContiguous(map, SIZE);
    for (const e of map) expect(e.description).toBe(e.type === 3 ? 'hole,zero' : e.type === 0 ? 'data' : e.description);
    expect(runs(map)).toEqual([
      { offset: 0, length: 4 * MiB, type: 3 },
      { offset: 4 * MiB, length: 2 * MiB, type: 0 },
      { offset: 6 * MiB, length: 34 * MiB, type: 3 },
      { offset: 40 * MiB, length: 1 * MiB, type: 0 },
      { offset: 41 * MiB, length: 23 * MiB, type: 3 },
    ]);
  });

  it('--map=qemu:allocation-depth on a raw image: everything belongs to this layer', async () => {
    const map = await nbdinfoMap(target.uri, 'qemu:allocation-depth');
    expectContiguous(map, SIZE);
    expect(runs(map)).toEqual([{ offset: 0, length: SIZE, type: 1 }]);
    expect(map.every((e) => e.description === 'local')).toBe(true);
  });
});

describe.runIf(hasNbdinfo)('nbdinfo on a read-only export', () => {
  let tmp: TempDir;
  let target: Target;
  beforeAll(async () => {
    tmp = makeTempDir();
    const image = createRawImage(tmp.file('ro.raw'), 8 * MiB, [[0, MiB]], 3);
    target = await serveImage(image, { readOnly: true });
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it('advertises READ_ONLY and no write-type commands', async () => {
    const e = (await nbdinfoJson(target.uri)).exports[0]!;
    expect(e['export-name']).toBe('');
    expect(e['export-size']).toBe(8 * MiB);
    expect(e.is_read_only).toBe(true);
    expect(e.can_trim).toBe(false);
    expect(e.can_zero).toBe(false);
    expect(e.can_fast_zero).toBe(false);
  });
});

describe.runIf(hasNbdinfo && onlyCownbd)('nbdinfo --list with several exports', () => {
  let tmp: TempDir;
  let srv: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    tmp = makeTempDir();
    createRawImage(tmp.file('a.raw'), 4 * MiB, [[0, MiB]], 1);
    createRawImage(tmp.file('b.raw'), 8 * MiB, [[MiB, MiB]], 2);
    createRawImage(tmp.file('c.raw'), 2 * MiB);
    createRawImage(tmp.file('d.raw'), MiB);
    srv = await startServer([
      '--export', `alpha=${tmp.file('a.raw')},description=First disk`,
      '--export', `beta=${tmp.file('b.raw')},ro,description=Second disk (read-only)`,
      '--export', `gamma=${tmp.file('c.raw')}`,
      '--export', `délta=${tmp.file('d.raw')},description=Données – ünïcode ✓`,
    ]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('lists every export with its size, description and read-only flag', async () => {
    const doc = await nbdinfoJson(srv.uri(), ['--list']);
    const byName = new Map(doc.exports.map((e) => [e['export-name'], e]));
    expect([...byName.keys()].sort()).toEqual(['alpha', 'beta', 'délta', 'gamma']);
    expect(byName.get('alpha')).toMatchObject({ description: 'First disk', 'export-size': 4 * MiB, is_read_only: false });
    expect(byName.get('beta')).toMatchObject({ description: 'Second disk (read-only)', 'export-size': 8 * MiB, is_read_only: true });
    expect(byName.get('gamma')).toMatchObject({ 'export-size': 2 * MiB, is_read_only: false });
    expect(byName.get('gamma')!.description ?? '').toBe('');
    // UTF-8 names and descriptions survive LIST and INFO byte-exactly.
    expect(byName.get('délta')).toMatchObject({ description: 'Données – ünïcode ✓', 'export-size': MiB });
  });

  it('an unknown export name is refused with a clear error', async () => {
    const r = await nbdinfo([srv.uri('nope')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown|not found|nope/i);
  });
});

describe.runIf(hasNbdinfo && requireTool('uml_mkcow') && onlyCownbd).each(['cow', 'add-cow'] as const)('nbdinfo --map on a %s overlay', (format) => {
  let tmp: TempDir;
  let target: Target;
  const BASE = 16 * MiB;
  beforeAll(async () => {
    tmp = makeTempDir();
    // Base: data in [0, 2M), hole after. Overlay: 1 MiB written at 8 MiB (over the base hole)
    // and 256 KiB written at 512 KiB (over base data).
    const base = createRawImage(tmp.file('base.raw'), BASE, [[0, 2 * MiB]], 5);
    target = await serveImage(makeOverlay(format, base, tmp.path).image, { name: 'vm' });
    const w = await qemuIo(target.uri, ['write -P 0x5a 8M 1M', 'write -P 0x33 512K 256K']);
    mustSucceed(w);
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it('qemu:allocation-depth: written clusters are local, the rest comes from the backing file', async () => {
    const map = await nbdinfoMap(target.uri, 'qemu:allocation-depth');
    expectContiguous(map, BASE);
    expect(runs(map)).toEqual([
      { offset: 0, length: 512 * 1024, type: 2 },
      { offset: 512 * 1024, length: 256 * 1024, type: 1 },
      { offset: 768 * 1024, length: 8 * MiB - 768 * 1024, type: 2 },
      { offset: 8 * MiB, length: MiB, type: 1 },
      { offset: 9 * MiB, length: 7 * MiB, type: 2 },
    ]);
    expect(map.find((e) => e.type === 2)!.description).toBe('backing depth 2');
  });

  it('base:allocation: overlay data and base data are data, the base hole stays hole,zero', async () => {
    const map = await nbdinfoMap(target.uri);
    expectContiguous(map, BASE);
    expect(runs(map)).toEqual([
      { offset: 0, length: 2 * MiB, type: 0 },
      { offset: 2 * MiB, length: 6 * MiB, type: 3 },
      { offset: 8 * MiB, length: MiB, type: 0 },
      { offset: 9 * MiB, length: 7 * MiB, type: 3 },
    ]);
  });
});

describe.runIf(hasNbdinfo && onlyCownbd)('clients over a Unix socket (nbd+unix://)', () => {
  let tmp: TempDir;
  let target: Target;
  beforeAll(async () => {
    tmp = makeTempDir();
    const image = createRawImage(tmp.file('unix.raw'), 8 * MiB, [[2 * MiB, MiB]], 9);
    target = await serveImage(image, { name: 'local', description: 'over AF_UNIX', unix: true });
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it('nbdinfo --json and --map work over the socket', async () => {
    expect(target.uri).toMatch(/^nbd\+unix:\/\/\/local\?socket=/);
    const e = (await nbdinfoJson(target.uri)).exports[0]!;
    expect(e).toMatchObject({ 'export-name': 'local', description: 'over AF_UNIX', 'export-size': 8 * MiB });
    expect(runs(await nbdinfoMap(target.uri))).toEqual([
      { offset: 0, length: 2 * MiB, type: 3 },
      { offset: 2 * MiB, length: MiB, type: 0 },
      { offset: 3 * MiB, length: 5 * MiB, type: 3 },
    ]);
  });

  it('qemu-io writes and reads back over the socket', async () => {
    const r = await qemuIo(target.uri, ['write -P 0x61 4095 8193', 'read -P 0x61 4095 8193']);
    expect(r.code).toBe(0);
    expect(r.patternFailures).toBe(0);
  });
});
