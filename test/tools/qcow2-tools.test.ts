/**
 * The image tool on qcow2 images made by qemu-img (`info`, `map`, `convert` with -f qcow2),
 * through the real CLI: JSON validated against the exported schemas, values checked against
 * what qemu-img says of the same image, and `convert -O qcow2` refused (read-only format).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INFO_CHAIN_SCHEMA, INFO_SCHEMA, MAP_SCHEMA } from '../../src/tools/json-schemas.js';
import { mustSucceed, qemuImg } from '../helpers/clients.js';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { makeQcow2, qemuIoWrites, referenceBytes, referenceMap, runsFromQemuMap, type StatusRun } from '../helpers/qcow2-vectors.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliJson, expectSchema } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasQemu = requireTool('qemu-img') && requireTool('qemu-io');

interface MapDoc {
  extents: Array<{ start: number; length: number; depth: number; zero: boolean; hole: boolean; data: boolean }>;
}

describe.runIf(hasQemu)('image tool on qcow2', () => {
  let tmp: TempDir;
  let base: string;
  let top: string;
  beforeAll(async () => {
    tmp = makeTempDir('qcow2-tools-');
    base = await makeQcow2(tmp.file('base.qcow2'), { size: 8 * MiB, options: 'compat=0.10,cluster_size=4096' });
    await qemuIoWrites(base, ['write -P 0x11 0 1M', 'write -P 0x12 3M 64k']);
    top = await makeQcow2(tmp.file('top.qcow2'), { size: 8 * MiB, options: 'extended_l2=on,compression_type=zstd', backing: base });
    await qemuIoWrites(top, ['write -P 0x21 512k 4k', 'write -z 3M 64k', 'write -P 0x22 6M 128k']);
    mustSucceed(await qemuImg(['snapshot', '-c', 's1', top]));
  });
  afterAll(() => tmp?.cleanup());

  it('check of a cow over a qcow2: clean with --backing-format qcow2 (a cow header records no format); without it the size check names the mismatch', () => {
    const cow = tmp.file('over-qcow2.cow');
    const made = cli(['create', '-f', 'cow', cow, '--backing', base, '--backing-format', 'qcow2']);
    expect(made.status, made.stderr).toBe(0);
    const ok = cli(['check', '--backing-format', 'qcow2', cow]);
    expect(ok.status, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toContain('No errors were found on the image.');
    const raw = cli(['check', cow]);
    expect(raw.status).toBe(2);
    expect(raw.stdout).toMatch(/Size mismatch \(8388608 vs \d+\) of COW header vs backing file/);
  });

  it('info --json: the schema, the header facts, the backing as recorded', () => {
    const info = cliJson(['info', '--json', '-f', 'qcow2', top]);
    expectSchema(INFO_SCHEMA, info);
    expect(info).toMatchObject({
      format: 'qcow2',
      virtualSize: 8 * MiB,
      // 4 KiB + 64 KiB (zero) + 128 KiB held by the top layer itself.
      allocatedBytes: 4096 + 65536 + 131072,
      backing: { stored: base, resolved: base, format: 'qcow2', exists: true, size: 8 * MiB, message: null },
      qcow2: { compat: '1.1', clusterSize: 65536, extendedL2: true, compressionType: 'zstd', snapshots: 1, dirty: false },
    });
    const chain = cliJson(['info', '--json', '--backing-chain', '-f', 'qcow2', top]);
    expectSchema(INFO_CHAIN_SCHEMA, chain);
    expect(chain.map((l: { filename: string; format: string }) => [l.filename, l.format])).toEqual([
      [top, 'qcow2'],
      [base, 'qcow2'],
    ]);
    expect(chain[1].qcow2).toMatchObject({ compat: '0.10', clusterSize: 4096 });
  });

  it('map --json: the schema, and the same runs as qemu-img map', async () => {
    const doc = cliJson<MapDoc>(['map', '--json', '-f', 'qcow2', top]);
    expectSchema(MAP_SCHEMA, doc);
    const ours: StatusRun[] = [];
    for (const e of doc.extents) {
      const what = e.depth === 0 ? 'hole' : e.data ? 'data' : 'zero';
      const last = ours[ours.length - 1];
      if (last && last.end === e.start && last.what === what && last.layer === e.depth - 1) last.end += e.length;
      else ours.push({ start: e.start, end: e.start + e.length, what, layer: e.depth - 1 });
    }
    expect(ours).toEqual(runsFromQemuMap(await referenceMap(top)));
  });

  it('convert -f qcow2 -O raw equals qemu-img convert; -O qcow2 is refused', async () => {
    const out = tmp.file('out.raw');
    const r = cli(['convert', '-f', 'qcow2', '-O', 'raw', top, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(out).equals(await referenceBytes(top))).toBe(true);
    const w = cli(['convert', '-f', 'raw', '-O', 'qcow2', out, tmp.file('back.qcow2')]);
    expect(w.status).not.toBe(0);
    expect(w.stderr).toMatch(/qcow2/);
  });
});
