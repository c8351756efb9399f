/**
 * `--output=json` of info, map and check prints what qemu-img prints: the real qemu-img
 * (Debian's 7.2) runs on the same qcow2 images as cownbd, and the keys (and, where both
 * read the same bytes, the values) must be equal; qemu-img jq recipes run unchanged on
 * cownbd's output. cow and add-cow (no qemu-img driver) are compared with a comparable
 * qcow2: same backing, same writes. `--json` keeps cownbd's own documents.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QEMU_CHECK_SCHEMA, QEMU_INFO_CHAIN_SCHEMA, QEMU_INFO_SCHEMA, QEMU_MAP_SCHEMA } from '../../src/tools/qemu-json-schemas.js';
import { INFO_SCHEMA, SCHEMAS } from '../../src/tools/json-schemas.js';
import { readFileSync } from 'node:fs';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { cli, cliOk, expectSchema, run, runOk } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasTools = requireTool('qemu-img') && requireTool('qemu-io') && requireTool('jq');
const tmp = makeTempDir('qemu-json-');
afterAll(() => tmp.cleanup());

type Doc = Record<string, unknown>;
const qemuJson = (args: string[]): any => JSON.parse(runOk('qemu-img', [...args, '--output=json'], tmp.path));
const ourJson = (args: string[], status = 0): any => {
  const r = cli([...args, '--output=json'], { cwd: tmp.path });
  expect(r.status, r.stderr).toBe(status);
  return JSON.parse(r.stdout);
};
/** Every key path of a document ("format-specific.data.compat"), arrays by their items' keys. */
function keyPaths(v: unknown, prefix = ''): string[] {
  if (Array.isArray(v)) return [...new Set(v.flatMap((x) => keyPaths(x, `${prefix}[].`)))].sort();
  if (v === null || typeof v !== 'object') return [];
  return Object.entries(v as Doc)
    .flatMap(([k, x]) => [`${prefix}${k}`, ...keyPaths(x, `${prefix}${k}.`)])
    .sort();
}
/** The same writes into a qcow2 (qemu-io) and any image cownbd serves. */
const WRITES = ['write -P 0x11 0 64k', 'write -P 0x22 1M 128k', 'write -z 2M 64k'];

describe.skipIf(!hasTools)('--output=json: qemu-img documents', () => {
  beforeAll(() => {
    createRawImage(tmp.file('base.raw'), 4 * MiB, [[0, 64 * 1024], [3 * MiB, 64 * 1024]], 7);
    runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'top.qcow2'], tmp.path);
    runOk('qemu-io', ['-f', 'qcow2', ...WRITES.flatMap((w) => ['-c', w]), 'top.qcow2'], tmp.path);
    runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', 'chain.qcow2'], tmp.path);
    runOk('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', 'base.raw', 'packed.qcow2'], tmp.path);
    // Internal snapshots: qemu-img info lists them under "snapshots".
    runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', 'base.raw', 'snap.qcow2'], tmp.path);
    runOk('qemu-img', ['snapshot', '-c', 'before', 'snap.qcow2'], tmp.path);
    runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 64k', 'snap.qcow2'], tmp.path);
    runOk('qemu-img', ['snapshot', '-c', 'after-write', 'snap.qcow2'], tmp.path);
    // The same writes as the qcow2, into overlays on the same base: qemu-io writes a raw
    // copy, cownbd convert keeps what differs from the base in a cow / add-cow overlay.
    runOk('cp', ['--sparse=always', 'base.raw', 'flat.raw'], tmp.path);
    runOk('qemu-io', ['-f', 'raw', ...WRITES.flatMap((w) => ['-c', w]), 'flat.raw'], tmp.path);
    cliOk(['convert', '-f', 'raw', 'flat.raw', '-O', 'cow', 'vm.cow', '-B', 'base.raw', '-F', 'raw', '-q'], { cwd: tmp.path });
    cliOk(['convert', '-f', 'raw', 'flat.raw', '-O', 'add-cow', 'vm.add-cow', '--image', 'vm.img', '-B', 'base.raw', '-F', 'raw', '-q'], { cwd: tmp.path });
  });

  it('info: the same document as qemu-img for qcow2 images (alone, over raw, in a chain, compressed, with snapshots)', () => {
    expect(qemuJson(['info', 'snap.qcow2']).snapshots).toHaveLength(2);
    for (const f of ['top.qcow2', 'chain.qcow2', 'packed.qcow2', 'snap.qcow2']) {
      const theirs = qemuJson(['info', f]);
      const ours = ourJson(['info', '-f', 'qcow2', f]);
      expectSchema(QEMU_INFO_SCHEMA, ours);
      expect(ours, f).toEqual(theirs);
    }
    const theirs = qemuJson(['info', '--backing-chain', 'chain.qcow2']);
    const ours = ourJson(['info', '--backing-chain', '-f', 'qcow2', 'chain.qcow2']);
    expectSchema(QEMU_INFO_CHAIN_SCHEMA, ours);
    expect(ours).toEqual(theirs);
    expect(ourJson(['info', '-f', 'raw', 'base.raw'])).toEqual(qemuJson(['info', '-f', 'raw', 'base.raw']));
  });

  it("info: cow and add-cow carry qemu-img's keys for a comparable qcow2; --json is still cownbd's document", () => {
    const want = keyPaths(qemuJson(['info', 'top.qcow2'])).filter((k) => !k.startsWith('format-specific.data.'));
    for (const [f, fmt] of [['vm.cow', 'cow'], ['vm.add-cow', 'add-cow']] as const) {
      const ours = ourJson(['info', f]);
      expectSchema(QEMU_INFO_SCHEMA, ours);
      expect(keyPaths(ours).filter((k) => !k.startsWith('format-specific.data.')), f).toEqual(want);
      expect(ours['format-specific'].type).toBe(fmt);
      expect(ours['virtual-size']).toBe(4 * MiB);
      expect(ours['backing-filename-format']).toBe('raw');
      const rich = JSON.parse(cliOk(['info', f, '--json', '--output=json'], { cwd: tmp.path }));
      expectSchema(INFO_SCHEMA, rich);
      expect(rich.virtualSize).toBe(4 * MiB);
    }
    expect(ourJson(['info', 'vm.cow'])['cluster-size']).toBe(512);
    expect(ourJson(['info', 'vm.add-cow'])['cluster-size']).toBe(64 * 1024);
  });

  it('map: the same array as qemu-img (0-based depth, present, offsets) for qcow2; the same keys for cow, add-cow, raw', () => {
    for (const f of ['top.qcow2', 'chain.qcow2', 'packed.qcow2']) {
      const ours = ourJson(['map', '-f', 'qcow2', f]);
      expectSchema(QEMU_MAP_SCHEMA, ours);
      expect(ours, f).toEqual(qemuJson(['map', f]));
    }
    expect(ourJson(['map', '-f', 'raw', 'base.raw'])).toEqual(qemuJson(['map', '-f', 'raw', 'base.raw']));
    // The overlays hold the same writes over the same base as top.qcow2: the same keys, and
    // the written range at depth 0 (the overlay itself) with its offset in the overlay's file.
    for (const f of ['vm.cow', 'vm.add-cow']) {
      const ours = ourJson(['map', f]) as Doc[];
      expectSchema(QEMU_MAP_SCHEMA, ours);
      expect(keyPaths(ours), f).toEqual(keyPaths(qemuJson(['map', 'top.qcow2'])));
      const written = ours.find((e) => e.start === MiB);
      expect(written, JSON.stringify(ours)).toMatchObject({ depth: 0, present: true, data: true, zero: false });
      expect(written!.length).toBeGreaterThanOrEqual(128 * 1024);
      expect(ours.find((e) => e.start === 3 * MiB), JSON.stringify(ours)).toMatchObject({ depth: 1, present: true, data: true, offset: 3 * MiB });
    }
  });

  it("check: qemu-img's keys for a comparable qcow2; errors and exit codes as qemu-img", () => {
    const theirs = qemuJson(['check', 'top.qcow2']);
    for (const f of ['vm.cow', 'vm.add-cow']) {
      const ours = ourJson(['check', f]);
      expectSchema(QEMU_CHECK_SCHEMA, ours);
      expect(keyPaths(ours), f).toEqual(keyPaths(theirs));
      expect(ours['check-errors']).toBe(0);
      expect(ours['allocated-clusters']).toBeGreaterThan(0);
    }
    // A leak: seven bits past the last sector of a 1001-sector cow (exit 3, "leaks": 1).
    createRawImage(tmp.file('odd.raw'), 1001 * 512);
    cliOk(['create', '-f', 'cow', 'odd.cow', '--backing', 'odd.raw'], { cwd: tmp.path });
    runOk('sh', ['-c', `printf '\\376' | dd of=odd.cow bs=1 seek=${8192 + 125} conv=notrunc status=none`], tmp.path);
    const leaky = ourJson(['check', 'odd.cow'], 3);
    expectSchema(QEMU_CHECK_SCHEMA, leaky);
    expect(leaky.leaks).toBe(1);
    expect(leaky).not.toHaveProperty('corruptions');
    const fixed = ourJson(['check', '-r', 'leaks', 'odd.cow'], 0);
    expect(fixed['leaks-fixed']).toBe(1);
    expect(fixed).not.toHaveProperty('leaks');
    // No checks for raw: qemu-img's exit 63, nothing on stdout; a missing file: exit 1.
    for (const [args, status] of [[['check', '-f', 'raw', 'base.raw'], 63], [['check', 'missing.cow'], 1]] as const) {
      const ours = cli([...args, '--output=json'], { cwd: tmp.path });
      const theirs = run('qemu-img', [...args.map((a) => (a === 'missing.cow' ? 'missing.qcow2' : a)), '--output=json'], tmp.path);
      expect([ours.status, ours.stdout]).toEqual([status, '']);
      expect(theirs.status).toBe(status);
      expect(ours.stderr).not.toBe('');
    }
  });

  it('qemu-img jq recipes run unchanged on cownbd output and give the same answers', () => {
    const recipes: Array<[string[], string]> = [
      [['info', '-f', 'qcow2', 'chain.qcow2'], '."virtual-size", .format, ."backing-filename", ."full-backing-filename", ."format-specific".data.compat'],
      [['info', '--backing-chain', '-f', 'qcow2', 'chain.qcow2'], '[.[].filename] | join(" <- ")'],
      [['map', '-f', 'qcow2', 'top.qcow2'], '[.[] | select(.data) | .length] | add'],
      [['map', '-f', 'qcow2', 'chain.qcow2'], '[.[] | select(.present and .depth == 0) | .length] | add // 0'],
    ];
    for (const [args, filter] of recipes) {
      const ours = runOk('sh', ['-c', `"$0" "$1" ${args.join(' ')} --output=json | jq -r '${filter}'`, process.execPath, cliPath()], tmp.path);
      const fmtless = args.filter((a, i) => a !== '-f' && args[i - 1] !== '-f');
      const theirs = runOk('sh', ['-c', `qemu-img ${fmtless.join(' ')} --output=json | jq -r '${filter}'`], tmp.path);
      expect(ours, `${args.join(' ')} | jq '${filter}'`).toBe(theirs);
      expect(ours.trim()).not.toBe('null');
    }
    const check = runOk('sh', ['-c', `"$0" "$1" check vm.add-cow --output=json | jq '."check-errors" + (.corruptions // 0) + (.leaks // 0)'`, process.execPath, cliPath()], tmp.path);
    expect(check.trim()).toBe('0');
  });
});

function cliPath(): string {
  return new URL('../../dist/cli/main.js', import.meta.url).pathname;
}

describe('the schemas in docs/image-tool.md', () => {
  it('are the exported SCHEMAS, every one of them', () => {
    const doc = readFileSync(new URL('../../docs/image-tool.md', import.meta.url), 'utf8');
    const headings: Record<string, keyof typeof SCHEMAS> = {
      info: 'info',
      check: 'check',
      map: 'map',
      commit: 'commit',
      convert: 'convert',
      rebase: 'rebase',
      'info --output=json': 'qemuInfo',
      'check --output=json': 'qemuCheck',
      'map --output=json': 'qemuMap',
    };
    for (const [heading, key] of Object.entries(headings)) {
      const m = new RegExp(`### ${heading.replace(/[-=]/g, '\\$&')}\\n\\n\`\`\`json\\n([\\s\\S]*?)\\n\`\`\`\\n`).exec(doc);
      expect(m, heading).not.toBeNull();
      expect(JSON.parse(m![1]!), heading).toEqual(JSON.parse(JSON.stringify(SCHEMAS[key])));
    }
  });
});
