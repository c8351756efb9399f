/**
 * qcow2 through the real server and real clients: `serve -r -f qcow2`, `--export
 * NAME=x.qcow2,ro,format=qcow2`, and a qcow2 golden base under per-machine cow overlays
 * (`--base golden.qcow2 --base-format qcow2 --overlay-dir DIR`). Bytes are compared with
 * `qemu-img convert -O raw`; base:allocation and qemu:allocation-depth with what qemu-nbd
 * (-r -f qcow2 -A) answers for the same image, read by the same nbdinfo.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, nbdcopy, nbdinfoMap, qemuImg, qemuIo, runTool, type MapEntry } from '../helpers/clients.js';
import { makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { makeQcow2, qemuIoWrites, randomOps, referenceBytes } from '../helpers/qcow2-vectors.js';
import { CLI_PATH, startServer, type RunningServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const hasTools = requireTool('qemu-img') && requireTool('qemu-io') && requireTool('qemu-nbd') && requireTool('nbdinfo') && requireTool('nbdcopy');

/** Adjacent entries of one type merged: servers may split runs differently. */
function runs(map: readonly MapEntry[]): Array<{ offset: number; length: number; type: number }> {
  const out: Array<{ offset: number; length: number; type: number }> = [];
  for (const e of map) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === e.offset && last.type === e.type) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length, type: e.type });
  }
  return out;
}

/** qemu-nbd -r -f qcow2 -A on a Unix socket: the reference answers for block status. */
async function withQemuNbd<T>(image: string, fn: (uri: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(path.join(tmpdir(), 'qcow2-ref-'));
  const sock = path.join(dir, 's');
  const proc = spawn('qemu-nbd', ['-r', '-f', 'qcow2', '-A', '-t', '-k', sock, '-x', '', image], { stdio: 'ignore' });
  const uri = `nbd+unix:///?socket=${sock}`;
  try {
    for (let i = 0; ; i++) {
      if ((await runTool('nbdinfo', ['--size', uri], { timeoutMs: 5000 })).code === 0) break;
      if (i > 100) throw new Error('qemu-nbd did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    return await fn(uri);
  } finally {
    proc.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

async function copyOut(uri: string, file: string): Promise<Buffer> {
  mustSucceed(await nbdcopy([uri, file]));
  return readFileSync(file);
}

describe.runIf(hasTools)('serving qcow2 images read-only', () => {
  let tmp: TempDir;
  let chainTop: string;
  let compressed: string;
  beforeAll(async () => {
    tmp = makeTempDir('qcow2-serve-');
    const base = await makeQcow2(tmp.file('base.qcow2'), { size: 16 * MiB, options: 'cluster_size=65536' });
    await qemuIoWrites(base, randomOps(11, 16 * MiB, 30));
    chainTop = await makeQcow2(tmp.file('top.qcow2'), { size: 16 * MiB, options: 'extended_l2=on', backing: base });
    await qemuIoWrites(chainTop, randomOps(12, 16 * MiB, 30));
    compressed = tmp.file('golden.qcow2');
    mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', 'compression_type=zstd', chainTop, compressed]));
  });
  afterAll(() => tmp?.cleanup());

  for (const which of ['a qcow2 chain (extended L2 over 64 KiB clusters)', 'a zstd-compressed image'] as const) {
    it(`serve -r -f qcow2, ${which}: nbdcopy equals qemu-img convert; block status equals qemu-nbd's`, async () => {
      const image = which.startsWith('a qcow2') ? chainTop : compressed;
      const srv = await startServer([image, '-r', '-f', 'qcow2']);
      try {
        const uri = srv.uri();
        const ours = await copyOut(uri, tmp.file(`out-${path.basename(image)}.raw`));
        expect(ours.equals(await referenceBytes(image))).toBe(true);
        const alloc = runs(await nbdinfoMap(uri, 'base:allocation'));
        const depth = runs(await nbdinfoMap(uri, 'qemu:allocation-depth'));
        const [refAlloc, refDepth] = await withQemuNbd(image, async (ref) => [runs(await nbdinfoMap(ref, 'base:allocation')), runs(await nbdinfoMap(ref, 'qemu:allocation-depth'))]);
        expect(alloc).toEqual(refAlloc);
        expect(depth).toEqual(refDepth);
        // The vectors do have holes, zeros and data, and (for the chain) backing depth 2.
        expect(new Set(alloc.map((r) => r.type))).toEqual(new Set([0, 3]));
        if (image === chainTop) expect(new Set(depth.map((r) => r.type))).toEqual(new Set([0, 1, 2]));
        // Writes are refused: the export is read-only, the file unchanged.
        const before = sha256File(image);
        const w = await qemuIo(uri, ['write -P 0x66 0 4k']);
        expect(w.code).not.toBe(0);
        expect(sha256File(image)).toBe(before);
      } finally {
        await srv.stop();
      }
    });
  }

  it('--export NAME=x.qcow2,ro,format=qcow2 next to a raw export', async () => {
    const raw = tmp.file('plain.raw');
    mustSucceed(await qemuImg(['create', '-q', '-f', 'raw', raw, '1M']));
    const srv = await startServer(['--export', `gold=${compressed},ro,format=qcow2`, '--export', `plain=${raw}`]);
    try {
      const ours = await copyOut(srv.uri('gold'), tmp.file('gold.raw'));
      expect(ours.equals(await referenceBytes(compressed))).toBe(true);
    } finally {
      await srv.stop();
    }
  });

  it('serve -f qcow2 without -r refuses to start with one line saying what to do', async () => {
    const r = await runTool(process.execPath, [CLI_PATH, 'serve', '-f', 'qcow2', compressed, '-p', '0'], { timeoutMs: 20_000 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`${compressed}: qcow2 images are served read-only: add -r`);
  });
});

describe.runIf(hasTools)('a qcow2 golden base under per-machine cow overlays', () => {
  let tmp: TempDir;
  let golden: string;
  let srv: RunningServer | undefined;
  beforeAll(async () => {
    tmp = makeTempDir('qcow2-base-');
    const src = await makeQcow2(tmp.file('src.qcow2'), { size: 8 * MiB });
    await qemuIoWrites(src, ['write -P 0x21 0 2M', 'write -z 2M 1M', 'write -P 0x22 6M 64k']);
    golden = tmp.file('golden.qcow2');
    mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', src, golden]));
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('--base golden.qcow2 --base-format qcow2 --overlay-dir: writes land in the overlay, the qcow2 never changes', async () => {
    const before = sha256File(golden);
    const dir = tmp.file('machines');
    srv = await startServer(['--base', golden, '--base-format', 'qcow2', '--overlay-dir', dir]);
    const uri = srv.uri('vm1');
    mustSucceed(await qemuIo(uri, ['write -P 0x5a 1M 64k', 'write -P 0x5b 7M 4k']));
    const verify = await qemuIo(uri, ['read -P 0x21 0 1M', 'read -P 0x5a 1M 64k', 'read -P 0x21 1088k 960k', 'read -P 0 2M 1M', 'read -P 0x22 6M 64k', 'read -P 0x5b 7M 4k'], { readOnly: true });
    mustSucceed(verify);
    expect(verify.patternFailures).toBe(0);
    // Another machine sees the golden image untouched.
    const other = await copyOut(srv.uri('vm2'), tmp.file('vm2.raw'));
    expect(other.equals(await referenceBytes(golden))).toBe(true);
    // Allocation depth: overlay writes at 1, the qcow2's clusters at 2, and what no layer
    // holds (unallocated in the qcow2) at 0, as qemu-nbd says for a qcow2 unallocated range.
    const depth = runs(await nbdinfoMap(uri, 'qemu:allocation-depth'));
    expect(depth).toEqual([
      { offset: 0, length: MiB, type: 2 },
      { offset: MiB, length: 64 * 1024, type: 1 },
      { offset: MiB + 64 * 1024, length: MiB - 64 * 1024, type: 2 },
      // convert -c keeps no zero clusters without a backing: 2M..3M is unallocated too.
      { offset: 2 * MiB, length: 4 * MiB, type: 0 },
      { offset: 6 * MiB, length: 64 * 1024, type: 2 },
      { offset: 6 * MiB + 64 * 1024, length: MiB - 64 * 1024, type: 0 },
      { offset: 7 * MiB, length: 4096, type: 1 },
      { offset: 7 * MiB + 4096, length: MiB - 4096, type: 0 },
    ]);
    await srv.stop();
    srv = undefined;
    expect(existsSync(path.join(dir, 'vm1.cow'))).toBe(true);
    expect(sha256File(golden)).toBe(before);
  });

  it('add-cow (format recorded in its header) and cow (format given at open) overlays over the qcow2', async () => {
    const before = sha256File(golden);
    const want = await referenceBytes(golden);
    const cli = (args: string[]) => runTool(process.execPath, [CLI_PATH, ...args]);
    mustSucceed(await cli(['create', '-f', 'add-cow', '--image', tmp.file('ac.img'), '-b', golden, '-F', 'qcow2', tmp.file('ac.add-cow')]));
    mustSucceed(await cli(['create', '-f', 'cow', '-b', golden, '-F', 'qcow2', tmp.file('c.cow')]));
    for (const args of [[tmp.file('ac.add-cow')], [tmp.file('c.cow'), '--backing-format', 'qcow2']]) {
      const s = await startServer(args);
      try {
        expect((await copyOut(s.uri(), tmp.file('ov.raw'))).equals(want), args[0]).toBe(true);
        mustSucceed(await qemuIo(s.uri(), ['write -P 0x3c 100k 8k']));
        const v = await qemuIo(s.uri(), ['read -P 0x3c 100k 8k', 'read -P 0x21 0 100k'], { readOnly: true });
        expect(v.patternFailures, args[0]).toBe(0);
      } finally {
        await s.stop();
      }
    }
    // A cow over a qcow2 opened without the format would read the container: its recorded
    // size (the qcow2's virtual size) does not match, so it is refused (docs/qcow2-format.md).
    const wrong = await runTool(process.execPath, [CLI_PATH, 'serve', tmp.file('c.cow'), '-p', '0'], { timeoutMs: 20_000 });
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain(`Size mismatch (${8 * MiB} vs `);
    expect(sha256File(golden)).toBe(before);
  });

  for (const args of [
    ['--ephemeral', '--base', 'GOLDEN', '--base-format', 'qcow2'],
    ['--ephemeral', '--base-format', 'qcow2', 'GOLDEN'],
    // -f names IMAGE's format, and with --ephemeral IMAGE is the base: it was read as raw.
    ['--ephemeral', '-f', 'qcow2', 'GOLDEN'],
  ]) {
    it(`serve ${args.join(' ')}: each connection sees the qcow2's disk, writes vanish`, async () => {
      const before = sha256File(golden);
      const eph = await startServer([...args.map((a) => (a === 'GOLDEN' ? golden : a)), '--ephemeral-dir', tmp.file('eph')]);
      try {
        const w = await qemuIo(eph.uri(), ['write -P 0x77 0 4k', 'read -P 0x77 0 4k', 'read -P 0x21 4k 60k', 'read -P 0x22 6M 64k']);
        mustSucceed(w);
        expect(w.patternFailures).toBe(0);
        const fresh = await copyOut(eph.uri(), tmp.file('eph.raw'));
        expect(fresh.equals(await referenceBytes(golden))).toBe(true);
      } finally {
        await eph.stop();
      }
      expect(sha256File(golden)).toBe(before);
    });
  }
});
