/**
 * Interop: qemu-img / qemu-io 7.2 against cownbd. qemu negotiates structured replies,
 * base:allocation and INFO_BLOCK_SIZE; `qemu-io write` sends WRITE+FUA (writethrough),
 * `write -z` WRITE_ZEROES (FUA|NO_HOLE), `discard` TRIM, and `qemu-img map` one
 * BLOCK_STATUS with REQ_ONE per extent. Every check compares DATA: the pattern qemu-io
 * verifies on read, a fresh connection's view, and the served file itself after the
 * server stopped (sha256 against an independently computed expectation).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { createPatternedImage, createRawImage, makeTempDir, pattern, sha256, sha256File, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { startServer } from '../helpers/server.js';
import { describeResult, makeOverlay, mustSucceed, nbdsh, qemuImg, qemuImgMap, qemuIo, runTool, serveImage, TARGET, type Target } from '../helpers/clients.js';

const MiB = 1024 * 1024;
const hasQemu = requireTool('qemu-img') && requireTool('qemu-io');
const hasNbdsh = requireTool('nbdsh');

describe.runIf(hasQemu)('qemu-img', () => {
  let tmp: TempDir;
  let target: Target | undefined;
  const SIZE = 32 * MiB;
  const DATA: Array<[number, number]> = [
    [MiB, 3 * MiB],
    [20 * MiB, 512 * 1024],
  ];

  beforeAll(() => {
    tmp = makeTempDir();
  });
  afterEach(async () => {
    await target?.stop();
    target = undefined;
  });
  afterAll(() => tmp?.cleanup());

  it('info reports the virtual size', async () => {
    const image = createRawImage(tmp.file('info.raw'), SIZE, DATA, 1);
    target = await serveImage(image);
    const r = mustSucceed(await qemuImg(['info', '--output=json', '-f', 'raw', target.uri]));
    const info = JSON.parse(r.stdout) as { 'virtual-size': number; format: string };
    expect(info['virtual-size']).toBe(SIZE);
    expect(info.format).toBe('raw');
  });

  it('map --output=json agrees with the image sparseness', async () => {
    const image = createRawImage(tmp.file('map.raw'), SIZE, DATA, 2);
    target = await serveImage(image);
    const map = await qemuImgMap(target.uri);
    // Merge adjacent entries of the same kind, then compare with the layout we wrote.
    const merged: Array<{ start: number; length: number; data: boolean; zero: boolean }> = [];
    let pos = 0;
    for (const e of map) {
      expect(e.start).toBe(pos);
      pos += e.length;
      const last = merged.at(-1);
      if (last && last.data === e.data && last.zero === e.zero) last.length += e.length;
      else merged.push({ start: e.start, length: e.length, data: e.data, zero: e.zero });
    }
    expect(pos).toBe(SIZE);
    expect(merged).toEqual([
      { start: 0, length: MiB, data: false, zero: true },
      { start: MiB, length: 3 * MiB, data: true, zero: false },
      { start: 4 * MiB, length: 16 * MiB, data: false, zero: true },
      { start: 20 * MiB, length: 512 * 1024, data: true, zero: false },
      { start: 20 * MiB + 512 * 1024, length: SIZE - 20 * MiB - 512 * 1024, data: false, zero: true },
    ]);
  });

  it('convert nbd → raw file reproduces the image and keeps its holes', async () => {
    const image = createRawImage(tmp.file('src.raw'), SIZE, DATA, 3);
    target = await serveImage(image, { name: 'src' });
    const out = tmp.file('copy.raw');
    mustSucceed(await qemuImg(['convert', '-f', 'raw', '-O', 'raw', target.uri, out]));
    expect(statSync(out).size).toBe(SIZE);
    expect(sha256File(out)).toBe(sha256File(image));
    // qemu-img skips zero extents reported by BLOCK_STATUS: the copy stays sparse.
    expect(statSync(out).blocks * 512).toBeLessThan(8 * MiB);
  });

  it('convert raw file → nbd writes every byte (the served file equals the source)', async () => {
    const source = createRawImage(tmp.file('in.raw'), SIZE, DATA, 4);
    const served = createPatternedImage(tmp.file('dest.raw'), SIZE, 99); // non-zero everywhere
    target = await serveImage(served, { name: 'dest' });
    mustSucceed(await qemuImg(['convert', '-n', '-f', 'raw', '-O', 'raw', source, target.uri]));
    mustSucceed(await qemuImg(['compare', '-f', 'raw', '-F', 'raw', source, target.uri]));
    await target.stop();
    target = undefined;
    expect(sha256File(served)).toBe(sha256File(source));
  });

  it('compare: identical → 0, one changed byte → 1 with its offset', async () => {
    const image = createRawImage(tmp.file('cmp.raw'), SIZE, DATA, 5);
    const twin = tmp.file('twin.raw');
    createRawImage(twin, SIZE, DATA, 5);
    target = await serveImage(image);
    const same = await qemuImg(['compare', '-f', 'raw', '-F', 'raw', twin, target.uri]);
    expect(same.code, describeResult(same)).toBe(0);
    expect(same.stdout).toContain('Images are identical');
    mustSucceed(await qemuIo(target.uri, ['write -P 0xee 12345678 1']));
    const diff = await qemuImg(['compare', '-f', 'raw', '-F', 'raw', twin, target.uri]);
    expect(diff.code, describeResult(diff)).toBe(1);
    // qemu-img reports the first differing sector.
    expect(diff.stdout).toContain(`Content mismatch at offset ${12345678 - (12345678 % 512)}`);
  });
});

describe.runIf(hasQemu)('qemu-io', () => {
  let tmp: TempDir;
  let target: Target | undefined;
  let image: string;
  const SIZE = 16 * MiB;

  beforeAll(async () => {
    tmp = makeTempDir();
    image = createPatternedImage(tmp.file('io.raw'), SIZE, 11);
    target = await serveImage(image, { name: 'io' });
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  // Operations (offset, length) chosen to hit unaligned heads/tails and request splitting.
  const ops = {
    aligned: [1 * MiB, 64 * 1024],
    unalignedSmall: [4097, 3],
    unalignedLarge: [2 * MiB + 511, 1 * MiB + 1027],
    zeroed: [5 * MiB + 100, 300_000],
    discarded: [8 * MiB, 2 * MiB],
    tailWrite: [SIZE - 777, 777],
  } as const;

  it('write -P / read -P verify in the same session, including unaligned ranges', async () => {
    const r = await qemuIo(target!.uri, [
      `write -P 0xab ${ops.aligned[0]} ${ops.aligned[1]}`,
      `write -P 0xcd ${ops.unalignedSmall[0]} ${ops.unalignedSmall[1]}`,
      `write -P 0x17 ${ops.unalignedLarge[0]} ${ops.unalignedLarge[1]}`,
      `write -P 0x99 ${ops.tailWrite[0]} ${ops.tailWrite[1]}`,
      `write -z ${ops.zeroed[0]} ${ops.zeroed[1]}`,
      `discard ${ops.discarded[0]} ${ops.discarded[1]}`,
      `read -P 0xab ${ops.aligned[0]} ${ops.aligned[1]}`,
      `read -P 0xcd ${ops.unalignedSmall[0]} ${ops.unalignedSmall[1]}`,
      `read -P 0x17 ${ops.unalignedLarge[0]} ${ops.unalignedLarge[1]}`,
      `read -P 0x99 ${ops.tailWrite[0]} ${ops.tailWrite[1]}`,
      `read -P 0 ${ops.zeroed[0]} ${ops.zeroed[1]}`,
      'flush',
    ]);
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.patternFailures, describeResult(r)).toBe(0);
    expect(r.stdout).toMatch(/discard 2097152\/2097152 bytes at offset 8388608/);
  });

  it('a fresh connection reads back the same data, and the bytes around edits are untouched', async () => {
    const r = await qemuIo(target!.uri, [
      `read -P 0xab ${ops.aligned[0]} ${ops.aligned[1]}`,
      `read -P 0xcd ${ops.unalignedSmall[0]} ${ops.unalignedSmall[1]}`,
      `read -P 0x17 ${ops.unalignedLarge[0]} ${ops.unalignedLarge[1]}`,
      `read -P 0x99 ${ops.tailWrite[0]} ${ops.tailWrite[1]}`,
      `read -P 0 ${ops.zeroed[0]} ${ops.zeroed[1]}`,
    ]);
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.patternFailures, describeResult(r)).toBe(0);
  });

  it('a read past the end fails cleanly and the connection keeps working', async () => {
    const r = await qemuIo(target!.uri, [`read ${SIZE - 512} 1024`, `read -P 0xab ${ops.aligned[0]} 512`]);
    expect(r.stdout + r.stderr).toMatch(/Input\/output error|Invalid argument|out of range|beyond|past/i);
    expect(r.stdout).toContain(`read 512/512 bytes at offset ${ops.aligned[0]}`);
    expect(r.patternFailures).toBe(0);
  });

  it('the served file holds exactly the expected bytes after the server stops', async () => {
    await target!.stop();
    target = undefined;
    // Expected content computed independently of the server: start from the seed pattern.
    const expected = Buffer.from(pattern(0, SIZE, 11));
    const fill = ([off, len]: readonly [number, number], byte: number) => expected.fill(byte, off, off + len);
    fill(ops.aligned, 0xab);
    fill(ops.unalignedSmall, 0xcd);
    fill(ops.unalignedLarge, 0x17);
    fill(ops.tailWrite, 0x99);
    fill(ops.zeroed, 0);
    const actual = readFileSync(image);
    // TRIM leaves its range undefined (the spec allows keeping or dropping the data): compare around it.
    const [dOff, dLen] = ops.discarded;
    expect(sha256(actual.subarray(0, dOff))).toBe(sha256(expected.subarray(0, dOff)));
    expect(sha256(actual.subarray(dOff + dLen))).toBe(sha256(expected.subarray(dOff + dLen)));
    const trimmed = actual.subarray(dOff, dOff + dLen);
    const zeroOrOld = trimmed.equals(Buffer.alloc(dLen)) || trimmed.equals(expected.subarray(dOff, dOff + dLen));
    expect(zeroOrOld, 'trimmed range holds either zeros or the old data').toBe(true);
  });
});

describe.runIf(hasQemu && hasNbdsh)('qemu-io on a read-only export', () => {
  let tmp: TempDir;
  let target: Target;
  let image: string;
  beforeAll(async () => {
    tmp = makeTempDir();
    image = createPatternedImage(tmp.file('ro.raw'), 4 * MiB, 21);
    target = await serveImage(image, { readOnly: true });
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it('qemu honours READ_ONLY, and a write sent anyway gets EPERM; the file is unchanged', async () => {
    const before = sha256File(image);
    // qemu-io refuses to open a read-only export read-write (it reads the flag).
    const rw = await qemuIo(target.uri, ['write -P 0x11 0 4096']);
    expect(rw.code).not.toBe(0);
    expect(rw.stdout + rw.stderr).toMatch(/Permission denied|read-only/i);
    const ro = await qemuIo(target.uri, ['read -P 0 4096 4096', 'read 0 4096'], { readOnly: true });
    expect(ro.stdout, describeResult(ro)).toContain('read 4096/4096 bytes at offset 0');
    // A client without local checks (libnbd, strict mode off) makes the SERVER refuse.
    const sh = await nbdsh(
      target.uri,
      [
        'h.set_strict_mode(0)',
        'try:',
        '    h.pwrite(b"x" * 4096, 0)',
        '    print("WROTE")',
        'except nbd.Error as e:',
        '    print("ERRNO", e.errnum)',
        'print("READ", h.pread(8, 0).hex())',
      ].join('\n'),
    );
    expect(sh.code, describeResult(sh)).toBe(0);
    expect(sh.stdout).not.toContain('WROTE');
    // The spec says EPERM (1); qemu-nbd 7.2 (reference target) answers EINVAL (22).
    expect(sh.stdout).toContain(target.kind === 'cownbd' ? 'ERRNO 1\n' : 'ERRNO');
    expect(sh.stdout).toContain(`READ ${pattern(0, 8, 21).toString('hex')}`);
    expect(sha256File(image)).toBe(before);
  });
});

/**
 * Overlays: partial-sector and cluster-crossing writes are where COW servers have had
 * bugs (read-modify-write against the base). qemu-io writes through cownbd, then a fresh
 * qemu-img convert reads the whole virtual disk, which must equal base + edits exactly.
 */
describe.runIf(hasQemu && requireTool('uml_mkcow')).each(['cow', 'add-cow'] as const)('qemu-io on a %s overlay', (format) => {
  let tmp: TempDir;
  let target: Target | undefined;
  let base: string;
  let baseSha: string;
  const SIZE = 16 * MiB;
  const writes: Array<[number, number, number]> = [
    [100, 1000, 0x41], // inside the first sector/cluster, both ends unaligned, over base data
    [65536 - 300, 600, 0x42], // crosses a 64 KiB cluster boundary
    [7 * MiB + 1, 70_000, 0x43], // over a base hole
    [SIZE - 4096 - 7, 4096 + 7, 0x44], // the very end of the disk
  ];
  const zeroed: [number, number] = [3 * MiB + 512, 128 * 1024 + 100]; // over base data: must read zeros
  const discarded: [number, number] = [11 * MiB, MiB]; // TRIM: zeros or base data afterwards

  beforeAll(async () => {
    tmp = makeTempDir();
    base = createRawImage(tmp.file('base.raw'), SIZE, [
      [0, 6 * MiB],
      [10 * MiB, 2 * MiB],
    ], 61);
    baseSha = sha256File(base);
    if (target === undefined && TARGET === 'cownbd') {
      target = await serveImage(makeOverlay(format, base, tmp.path).image, { name: format });
    }
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it.runIf(TARGET === 'cownbd')('unaligned writes, write -z and discard read back exactly as base + edits', async () => {
    const cmds = writes.map(([o, l, b]) => `write -P 0x${b.toString(16)} ${o} ${l}`);
    cmds.push(`write -z ${zeroed[0]} ${zeroed[1]}`, `discard ${discarded[0]} ${discarded[1]}`);
    cmds.push(...writes.map(([o, l, b]) => `read -P 0x${b.toString(16)} ${o} ${l}`), `read -P 0 ${zeroed[0]} ${zeroed[1]}`);
    const r = await qemuIo(target!.uri, cmds);
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.patternFailures, describeResult(r)).toBe(0);

    const out = tmp.file('whole.raw');
    mustSucceed(await qemuImg(['convert', '-f', 'raw', '-O', 'raw', target!.uri, out]));
    const expected = readFileSync(base);
    for (const [o, l, b] of writes) expected.fill(b, o, o + l);
    expected.fill(0, zeroed[0], zeroed[0] + zeroed[1]);
    const actual = readFileSync(out);
    expect(actual.length).toBe(SIZE);
    const [dOff, dLen] = discarded;
    const firstDiff = (a: Buffer, b: Buffer) => {
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
      return -1;
    };
    expect(firstDiff(actual.subarray(0, dOff), expected.subarray(0, dOff)), 'first differing byte before the trimmed range').toBe(-1);
    expect(firstDiff(actual.subarray(dOff + dLen), expected.subarray(dOff + dLen)), 'first differing byte after the trimmed range').toBe(-1);
    const t = actual.subarray(dOff, dOff + dLen);
    expect(t.equals(Buffer.alloc(dLen)) || t.equals(expected.subarray(dOff, dOff + dLen)), 'trimmed range: zeros or base data').toBe(true);
  });

  it.runIf(TARGET === 'cownbd')('the base image is never written', async () => {
    await target!.stop();
    target = undefined;
    expect(sha256File(base)).toBe(baseSha);
  });
});

/**
 * Several exports in one server: two overlays of the SAME base must stay isolated (nbdkit
 * < 1.44 shared one overlay across exports), and a raw export whose size is not a multiple
 * of 512 must be served to the last byte.
 */
describe.runIf(hasQemu && requireTool('uml_mkcow') && TARGET === 'cownbd')('qemu clients on a multi-export server', () => {
  let tmp: TempDir;
  let srv: Awaited<ReturnType<typeof startServer>> | undefined;
  let base: string;
  let baseSha: string;
  const ODD = 3 * MiB + 123;
  beforeAll(async () => {
    tmp = makeTempDir();
    base = createRawImage(tmp.file('base.raw'), 8 * MiB, [[0, 8 * MiB]], 91);
    baseSha = sha256File(base);
    const a = makeOverlay('cow', base, tmp.path).image;
    const bDir = tmp.file('b');
    mkdirSync(bDir);
    const b = makeOverlay('add-cow', base, bDir).image;
    createRawImage(tmp.file('odd.raw'), ODD, [[0, ODD]], 92);
    srv = await startServer([
      '--export', `a=${a}`,
      '--export', `b=${b}`,
      '--export', `odd=${tmp.file('odd.raw')}`,
      '--export', `base=${base},ro`,
    ]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('writes to one overlay export are invisible in the other and in the base', async () => {
    mustSucceed(await qemuIo(srv!.uri('a'), ['write -P 0xa1 1M 64K']));
    mustSucceed(await qemuIo(srv!.uri('b'), ['write -P 0xb2 2M 64K']));
    const a = await qemuIo(srv!.uri('a'), ['read -P 0xa1 1M 64K']);
    const b = await qemuIo(srv!.uri('b'), ['read -P 0xb2 2M 64K']);
    expect(a.patternFailures + b.patternFailures, describeResult(a) + describeResult(b)).toBe(0);
    // Each export still shows the base at the other's offset (compare with the read-only base export).
    const cmpA = await qemuImg(['compare', '-f', 'raw', '-F', 'raw', srv!.uri('base'), srv!.uri('a')]);
    expect(cmpA.stdout).toContain(`Content mismatch at offset ${MiB}`);
    const cmpB = await qemuImg(['compare', '-f', 'raw', '-F', 'raw', srv!.uri('base'), srv!.uri('b')]);
    expect(cmpB.stdout).toContain(`Content mismatch at offset ${2 * MiB}`);
    expect(sha256File(base)).toBe(baseSha);
  });

  it('an export of 3 MiB + 123 bytes is served to the last byte', async () => {
    // nbdinfo shows the exact size; qemu's block layer rounds it UP to 512 (qemu-nbd itself
    // does the same with such a file) and zero-fills reads of the padding locally.
    const size = mustSucceed(await runTool('nbdinfo', ['--size', srv!.uri('odd')])).stdout.trim();
    expect(Number(size)).toBe(ODD);
    const info = JSON.parse(mustSucceed(await qemuImg(['info', '--output=json', '-f', 'raw', srv!.uri('odd')])).stdout) as {
      'virtual-size': number;
    };
    expect(info['virtual-size']).toBe(Math.ceil(ODD / 512) * 512);
    const out = tmp.file('odd-copy.raw');
    mustSucceed(await qemuImg(['convert', '-f', 'raw', '-O', 'raw', srv!.uri('odd'), out]));
    const copy = readFileSync(out);
    expect(sha256(copy.subarray(0, ODD))).toBe(sha256File(tmp.file('odd.raw')));
    expect(copy.subarray(ODD).equals(Buffer.alloc(copy.length - ODD))).toBe(true);
    const r = await qemuIo(srv!.uri('odd'), [`write -P 0x7e ${ODD - 100} 100`, `read -P 0x7e ${ODD - 100} 100`, `write -P 0x7f ${ODD - 50} 100`]);
    expect(r.patternFailures, describeResult(r)).toBe(0);
    expect(r.stdout).toContain(`wrote 100/100 bytes at offset ${ODD - 100}`);
    // Crossing the real end: the server answers ENOSPC and writes nothing.
    expect(r.stdout + r.stderr).toContain('write failed: No space left on device');
    expect(statSync(tmp.file('odd.raw')).size).toBe(ODD);
    expect(readFileSync(tmp.file('odd.raw')).subarray(ODD - 50).equals(Buffer.alloc(50, 0x7e))).toBe(true);
  });
});
