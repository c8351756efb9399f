/**
 * `cownbd compare A B` gives qemu-img compare's verdicts: the real qemu-img compare runs on
 * the same pairs (or, for formats qemu-img cannot read — cow, add-cow, s3:// — on the raw
 * files those images were made from), and the exit code and stdout must be the same:
 * identical / content mismatch at the same sector / size mismatch (extra part zero or not,
 * -s strict) / errors (exit 2).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { requireTool } from '../helpers/tools.js';
import { cownbd, publish } from '../objectstore/s3-helpers.js';
import { cli, cliOk, run, runOk } from './tool-helpers.js';

const MiB = 1024 * 1024;
const hasTools = requireTool('qemu-img') && requireTool('qemu-io');
const tmp = makeTempDir('compare-');
afterAll(() => tmp.cleanup());

interface Verdict {
  status: number | null;
  stdout: string;
}
const qemuCompare = (args: string[]): Verdict => {
  const r = run('qemu-img', ['compare', ...args], tmp.path);
  return { status: r.status, stdout: r.stdout };
};
const ourCompare = (args: string[]): Verdict & { stderr: string } => cli(['compare', ...args], { cwd: tmp.path });
const write = (file: string, fmt: string, ...cmds: string[]): string => runOk('qemu-io', ['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file], tmp.path);

describe.skipIf(!hasTools)('compare: qemu-img compare verdicts', () => {
  beforeAll(() => {
    createRawImage(tmp.file('base.raw'), 4 * MiB, [[0, 256 * 1024], [3 * MiB, 64 * 1024]], 5);
    runOk('cp', ['--sparse=never', 'base.raw', 'dense.raw'], tmp.path);
    runOk('cp', ['base.raw', 'diff.raw'], tmp.path);
    runOk('cp', ['base.raw', 'copy.raw'], tmp.path);
    write('diff.raw', 'raw', 'write -P 0x42 2000000 1');
    runOk('cp', ['base.raw', 'longer-zero.raw'], tmp.path);
    runOk('truncate', ['-s', '6M', 'longer-zero.raw'], tmp.path);
    runOk('cp', ['longer-zero.raw', 'longer-data.raw'], tmp.path);
    write('longer-data.raw', 'raw', 'write -P 0x01 5000000 1');
    runOk('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', 'base.raw', 'packed.qcow2'], tmp.path);
    runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'top.qcow2'], tmp.path);
    write('top.qcow2', 'qcow2', 'write -P 0x33 1M 4k');
  });

  it('raw and qcow2 pairs: the same exit code and the same words as qemu-img', () => {
    const pairs: Array<[string, string, string[]]> = [
      ['base.raw', 'dense.raw', []],
      ['base.raw', 'diff.raw', []],
      ['diff.raw', 'base.raw', []],
      ['base.raw', 'longer-zero.raw', []],
      ['longer-zero.raw', 'base.raw', []],
      ['base.raw', 'longer-data.raw', []],
      ['longer-data.raw', 'base.raw', []],
      ['base.raw', 'longer-zero.raw', ['-s']],
      ['base.raw', 'dense.raw', ['-s']],
      ['base.raw', 'copy.raw', ['-s']],
      ['base.raw', 'diff.raw', ['-s']],
      ['packed.qcow2', 'base.raw', ['-s']],
      ['top.qcow2', 'base.raw', ['-s']],
      ['packed.qcow2', 'base.raw', []],
      ['packed.qcow2', 'diff.raw', []],
      ['top.qcow2', 'base.raw', []],
      ['top.qcow2', 'packed.qcow2', []],
      ['base.raw', 'top.qcow2', ['-q']],
    ];
    const fmt = (f: string): string => (f.endsWith('.qcow2') ? 'qcow2' : 'raw');
    for (const [a, b, extra] of pairs) {
      const args = [...extra, '-f', fmt(a), '-F', fmt(b), a, b];
      const want = qemuCompare(args);
      const got = ourCompare(args);
      // -s block-status mismatches: the verdict is qemu-img's, the offset may differ (qemu-img
      // also compares internal status bits such as "offset valid": docs/image-tool.md).
      const strictOffset = /^Strict mode: Offset \d+ block status mismatch!\n$/;
      if (strictOffset.test(want.stdout)) expect([got.status, strictOffset.test(got.stdout)], `compare ${args.join(' ')}: ${got.stdout}${got.stderr}`).toEqual([want.status, true]);
      else expect({ status: got.status, stdout: got.stdout }, `compare ${args.join(' ')}: ${got.stderr}`).toEqual(want);
    }
    // Sanity: the pairs cover every verdict.
    expect(ourCompare(['-f', 'raw', '-F', 'raw', 'base.raw', 'diff.raw']).stdout).toBe('Content mismatch at offset 1999872!\n');
    expect(ourCompare(['-f', 'raw', '-F', 'raw', 'base.raw', 'longer-zero.raw']).stdout).toBe('Warning: Image size mismatch!\nImages are identical.\n');
  });

  it('cow and add-cow overlays: the verdict qemu-img gives on the raw disks they hold', () => {
    // vm.* hold diff.raw's disk over base.raw (convert keeps only the differing sectors).
    cliOk(['convert', '-f', 'raw', 'diff.raw', '-O', 'cow', 'vm.cow', '-B', 'base.raw', '-F', 'raw', '-q'], { cwd: tmp.path });
    cliOk(['convert', '-f', 'raw', 'diff.raw', '-O', 'add-cow', 'vm.add-cow', '--image', 'vm.img', '-B', 'base.raw', '-F', 'raw', '-q'], { cwd: tmp.path });
    for (const overlay of ['vm.cow', 'vm.add-cow']) {
      for (const [other, rawOther] of [['base.raw', 'base.raw'], ['diff.raw', 'diff.raw'], ['packed.qcow2', 'base.raw'], ['longer-data.raw', 'longer-data.raw']]) {
        const want = qemuCompare(['-f', 'raw', '-F', 'raw', 'diff.raw', rawOther!]);
        const got = ourCompare([overlay, ...(other!.endsWith('.qcow2') ? ['-F', 'qcow2'] : ['-F', 'raw']), other!]);
        expect({ status: got.status, stdout: got.stdout }, `${overlay} vs ${other}: ${got.stderr}`).toEqual(want);
      }
    }
  });

  it('errors are exit 2 with a message on stderr; a foreign image without -f is refused, not compared as raw', () => {
    const missing = ourCompare(['-f', 'raw', '-F', 'raw', 'base.raw', 'missing.raw']);
    expect(qemuCompare(['-f', 'raw', '-F', 'raw', 'base.raw', 'missing.raw']).status).toBe(2);
    expect(missing.status).toBe(2);
    expect(missing.stdout).toBe('');
    expect(missing.stderr).toMatch(/^cownbd: compare: .*missing\.raw/);
    const foreign = ourCompare(['packed.qcow2', 'base.raw']);
    expect(foreign.status).toBe(2);
    expect(foreign.stderr).toMatch(/'packed\.qcow2' is a qcow2 .*-f qcow2/);
  });
});

describe.skipIf(!hasTools)('compare over s3:// images', () => {
  let s3: S3TestServer;
  beforeAll(async () => {
    s3 = await startS3Server();
  });
  afterAll(async () => {
    await s3?.close();
  });

  it('a published image compares identical to its source, and differs from a changed copy where it changed', async () => {
    const src = createRawImage(tmp.file('s3-src.raw'), 4 * MiB, [[0, MiB]], 9);
    const pub = await publish(s3, src, 's3://golden/cmp');
    const cache = ['--cache-dir', tmp.file('s3-cache')];
    const same = await cownbd(s3, ['compare', pub.uri, '-F', 'raw', src, ...cache]);
    expect([same.code, same.stdout], same.stderr).toEqual([0, 'Images are identical.\n']);
    runOk('cp', [src, tmp.file('s3-changed.raw')]);
    write('s3-changed.raw', 'raw', 'write -P 0x99 512k 512');
    const changed = await cownbd(s3, ['compare', pub.uri, '-F', 'raw', tmp.file('s3-changed.raw'), ...cache]);
    expect([changed.code, changed.stdout], changed.stderr).toEqual([1, 'Content mismatch at offset 524288!\n']);
    // A cow overlay over the s3:// base is a chain like any other.
    const overlay = await cownbd(s3, ['create', '-f', 'cow', tmp.file('s3.cow'), '--backing', pub.uri, ...cache]);
    expect(overlay.code, overlay.stderr).toBe(0);
    const chain = await cownbd(s3, ['compare', tmp.file('s3.cow'), '-F', 'raw', src, ...cache]);
    expect([chain.code, chain.stdout], chain.stderr).toEqual([0, 'Images are identical.\n']);
  });
});
