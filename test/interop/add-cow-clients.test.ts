/**
 * Interop: real clients against an add-cow export served by the real cownbd CLI.
 *
 *   - qemu-io writes (unaligned, WRITE+FUA, WRITE_ZEROES, TRIM) over an add-cow on a
 *     patterned backing; then `qemu-img compare` of the export and, after the server
 *     stopped, of a fresh local open, against an independently built raw expectation.
 *   - fio random writes with verify=crc32c across many clusters (4 KiB clusters, 4 KiB and
 *     odd block sizes, iodepth 8: concurrent allocation of neighbouring clusters).
 *   - Crash: data acknowledged after FLUSH survives `kill -9` of the server, writes after
 *     the last FLUSH leave every cluster either fully old or new-with-correct-COW-fill,
 *     and the backing file never changes.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { createAddCow, openImage } from '../../src/formats/open-image.js';
import { describeResult, fioNbd, mustSucceed, qemuImg, qemuIo, serveImage, TARGET, type Target } from '../helpers/clients.js';
import { createPatternedImage, makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
// These tests serve an add-cow file: the qemu-nbd reference target cannot read it.
const isCownbd = TARGET === 'cownbd';
const hasQemu = requireTool('qemu-img') && requireTool('qemu-io');
const hasFio = requireTool('fio');
const hasNbdPython = requireNbdPython();

let tmp: TempDir | undefined;
let target: Target | undefined;

afterEach(async () => {
  await target?.stop('SIGKILL').catch(() => {});
  target = undefined;
  tmp?.cleanup();
  tmp = undefined;
});

async function makeAddCow(backingSize: number, clusterSize: number, size?: number): Promise<{ addCow: string; base: string; dir: TempDir }> {
  const dir = makeTempDir('addcow-interop-');
  tmp = dir;
  const base = createPatternedImage(dir.file('base.img'), backingSize, 21);
  await createAddCow(dir.file('ov.add-cow'), {
    imageFile: 'disk.img',
    backingFile: 'base.img',
    clusterSize,
    ...(size !== undefined ? { size } : {}),
  });
  return { addCow: dir.file('ov.add-cow'), base, dir };
}

async function readAllLocally(file: string): Promise<Buffer> {
  const dev = await openImage(file, { readOnly: true });
  try {
    const buf = Buffer.alloc(dev.size);
    await dev.read(0, buf);
    return buf;
  } finally {
    await dev.close();
  }
}

describe.runIf(isCownbd && hasQemu)('add-cow export with qemu-io / qemu-img compare', () => {
  it('qemu-io writes, zeroes and discards match an independent raw expectation', async () => {
    const size = 6 * MiB;
    const { addCow, base, dir } = await makeAddCow(4 * MiB + 1000, 64 * KiB, size);
    const baseSha = sha256File(base);
    target = await serveImage(addCow, { extraArgs: ['-f', 'add-cow'] });

    const expected = Buffer.alloc(size);
    readFileSync(base).copy(expected);
    const ops: Array<[string, (b: Buffer) => void]> = [
      ['write -P 0xaa 1000 3000', (b) => b.fill(0xaa, 1000, 4000)],
      ['write -P 0xbb 65000 200000', (b) => b.fill(0xbb, 65000, 265000)],
      ['write -P 0xcc 4194000 4096', (b) => b.fill(0xcc, 4194000, 4198096)],
      ['write -P 0xdd 6290944 512', (b) => b.fill(0xdd, 6290944, 6291456)],
      ['write -z 300000 70000', (b) => b.fill(0, 300000, 370000)],
      ['discard 1048576 131072', (b) => b.fill(0, 1048576, 1179648)],
    ];
    for (const [cmd, apply] of ops) {
      mustSucceed(await qemuIo(target.uri, [cmd]));
      apply(expected);
    }
    const ref = dir.file('expected.raw');
    writeFileSync(ref, expected);
    const live = await qemuImg(['compare', '-f', 'raw', '-F', 'raw', target.uri, ref]);
    expect(live.code, describeResult(live)).toBe(0);

    await target.stop();
    target = undefined;
    // A fresh open of the files (no server) sees the same disk: the bitmap was persisted.
    expect((await readAllLocally(addCow)).equals(expected)).toBe(true);
    expect(sha256File(base)).toBe(baseSha);
  });
});

describe.runIf(isCownbd && hasFio)('add-cow export with fio verify', () => {
  it.each([
    ['4 KiB blocks', '4k'],
    ['odd 3 KiB blocks straddling clusters', '3k'],
  ])('random writes with crc32c verify, %s, iodepth 8', async (_t, bs) => {
    const { addCow, base } = await makeAddCow(8 * MiB, 4 * KiB, 12 * MiB);
    const baseSha = sha256File(base);
    target = await serveImage(addCow);
    const r = await fioNbd(
      target.uri,
      {
        name: 'addcow-verify',
        rw: 'randwrite',
        bs,
        size: `${12 * MiB}`,
        iodepth: 8,
        verify: 'crc32c',
        do_verify: 1,
        verify_fatal: 1,
        randrepeat: 1,
        io_size: `${6 * MiB}`,
      },
      { timeoutMs: 90_000 },
    );
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.jobs[0]?.error).toBe(0);
    expect(r.jobs[0]?.writeBytes).toBeGreaterThan(0);
    await target.stop();
    target = undefined;
    expect(sha256File(base)).toBe(baseSha);
  });
});

describe.runIf(isCownbd && hasNbdPython)('add-cow export and kill -9', () => {
  it('flushed writes survive; unflushed clusters are either old or complete', async () => {
    const { addCow, base } = await makeAddCow(2 * MiB, 64 * KiB);
    const baseSha = sha256File(base);
    target = await serveImage(addCow);
    // Flushed: 3 partial-cluster writes. Unflushed: 2 more. Then the server dies.
    const flushed: Array<[number, number, number]> = [
      [100, 5000, 0x11],
      [200_000, 70_000, 0x22],
      [2 * MiB - 300, 300, 0x33],
    ];
    const unflushed: Array<[number, number, number]> = [
      [700_000, 1000, 0x44],
      [1_500_000, 100_000, 0x55],
    ];
    await nbdPython(
      `
import nbd
h = nbd.NBD()
h.connect_uri(uri)
for off, n, b in flushed:
    h.pwrite(bytes([b]) * n, off)
h.flush()
for off, n, b in unflushed:
    h.pwrite(bytes([b]) * n, off)
print("ok")
`,
      { uri: target.uri, flushed, unflushed },
    );
    expect(await target.stop('SIGKILL')).not.toBe(0);
    target = undefined;

    const got = await readAllLocally(addCow);
    const backing = readFileSync(base);
    const expected = Buffer.from(backing);
    for (const [off, n, b] of flushed) expected.fill(b, off, off + n);
    // Flushed data is exact everywhere outside the clusters touched by unflushed writes.
    const cluster = 64 * KiB;
    const volatile = new Set<number>();
    for (const [off, n] of unflushed) for (let c = Math.floor(off / cluster); c <= Math.floor((off + n - 1) / cluster); c++) volatile.add(c);
    for (let c = 0; c * cluster < got.length; c++) {
      const lo = c * cluster;
      const hi = Math.min(lo + cluster, got.length);
      const old = expected.subarray(lo, hi);
      if (!volatile.has(c)) {
        expect(got.subarray(lo, hi).equals(old), `cluster ${c}`).toBe(true);
        continue;
      }
      const complete = Buffer.from(old);
      for (const [off, n, b] of unflushed) {
        const s = Math.max(off, lo);
        const e = Math.min(off + n, hi);
        if (s < e) complete.fill(b, s - lo, e - lo);
      }
      const now = got.subarray(lo, hi);
      expect(now.equals(old) || now.equals(complete), `cluster ${c} is neither old nor complete`).toBe(true);
    }
    expect(sha256File(base)).toBe(baseSha);
  });
});
