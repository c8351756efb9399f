/**
 * Modern tier: qemu 10.0's block tools (Debian trixie qemu-utils: qemu-img info /
 * convert / map / compare, qemu-io read / write / discard) against cownbd over 127.0.0.1
 * TCP and a Unix socket (docs/modern-clients.md). qemu >= 8.2 asks for extended headers;
 * titles marked [ext] depend on EXTENDED_HEADERS_EXPECTED (test/helpers/modern.ts).
 * Every check compares data; test/interop/clients-qemu.test.ts does the same with qemu 7.2.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeResult, serverLog, type QemuMapEntry } from '../helpers/clients.js';
import { createRawImage, makeTempDir, pattern, sha256File, type TempDir } from '../helpers/images.js';
import { modern, modernOk, requireModernTool, serverComplaints, startModern } from '../helpers/modern.js';
import { startServer, type RunningServer } from '../helpers/server.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const DATA: Array<[number, number]> = [
  [2 * MiB, 1 * MiB],
  [20 * MiB, 3 * MiB],
];
const hasQemu = requireModernTool('qemu-img', 'qemu-io');
const hasReference = requireModernTool('qemu-nbd', 'nbdinfo');

/** qemu-img map entries merged into [start, length, data] runs. */
function dataRuns(map: QemuMapEntry[]): Array<[number, number, boolean]> {
  const out: Array<[number, number, boolean]> = [];
  for (const e of map) {
    const last = out.at(-1);
    if (last && last[2] === e.data && last[0] + last[1] === e.start) last[1] += e.length;
    else out.push([e.start, e.length, e.data]);
  }
  return out;
}

describe.runIf(hasQemu)('qemu 10 block tools against cownbd', () => {
  let tmp: TempDir;
  let tcp: RunningServer;
  let unix: RunningServer;
  const both = () => [
    ['TCP', tcp],
    ['Unix socket', unix],
  ] as const;

  beforeAll(async () => {
    tmp = makeTempDir();
    createRawImage(tmp.file('disk.raw'), SIZE, DATA, 5);
    createRawImage(tmp.file('rw.raw'), 16 * MiB);
    const args = ['--export', `disk=${tmp.file('disk.raw')},ro`, '--export', `rw=${tmp.file('rw.raw')}`, '--log-level', 'debug'];
    [tcp, unix] = await Promise.all([startServer(args), startServer(args, { unix: true })]);
  });
  afterAll(async () => {
    await Promise.all([tcp?.stop(), unix?.stop()]);
    tmp?.cleanup();
  });

  it('qemu-img info reports the virtual size of the export, and qemu asked for extended headers', async () => {
    for (const [how, srv] of both()) {
      const r = await modernOk('qemu-img', ['info', '--output=json', '-f', 'raw', srv.uri('disk')]);
      const info = JSON.parse(r.stdout) as { 'virtual-size': number; format: string };
      expect(info['virtual-size'], how).toBe(SIZE);
      expect(info.format, how).toBe('raw');
      expect(serverLog(srv).some((l) => l.msg === 'option' && l.option === 'EXTENDED_HEADERS'), how).toBe(true);
    }
  });

  it('qemu-img map shows the data islands and the holes', async () => {
    for (const [how, srv] of both()) {
      const r = await modernOk('qemu-img', ['map', '--output=json', '-f', 'raw', srv.uri('disk')]);
      expect(dataRuns(JSON.parse(r.stdout) as QemuMapEntry[]), how).toEqual([
        [0, 2 * MiB, false],
        [2 * MiB, 1 * MiB, true],
        [3 * MiB, 17 * MiB, false],
        [20 * MiB, 3 * MiB, true],
        [23 * MiB, 9 * MiB, false],
      ]);
    }
  });

  it('qemu-img convert cownbd → file reproduces the image', async () => {
    for (const [how, srv] of both()) {
      const out = tmp.file(`conv-${srv === tcp ? 'tcp' : 'unix'}.raw`);
      await modernOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri('disk'), out]);
      expect(sha256File(out), how).toBe(sha256File(tmp.file('disk.raw')));
    }
  });

  it('qemu-img convert file → cownbd writes every byte; compare says identical, then finds a changed byte', async () => {
    const src = tmp.file('src.raw');
    writeFileSync(src, Buffer.concat([randomBytes(5 * MiB), Buffer.alloc(6 * MiB), randomBytes(5 * MiB)]));
    writeFileSync(tmp.file('rw.raw'), randomBytes(16 * MiB)); // the zero run must overwrite old data
    for (const [how, srv] of both()) {
      const conv = await modern('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, srv.uri('rw')]);
      expect(conv.code, describeResult(conv) + serverComplaints(srv)).toBe(0);
      expect(readFileSync(tmp.file('rw.raw')).equals(readFileSync(src)), how).toBe(true);
      const same = await modern('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, srv.uri('rw')]);
      expect(same.code, describeResult(same)).toBe(0);
      expect(same.stdout).toContain('Images are identical.');
    }
    const twin = tmp.file('twin.raw');
    const buf = readFileSync(src);
    buf[7 * MiB + 3] = 0x42;
    writeFileSync(twin, buf);
    const diff = await modern('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', twin, tcp.uri('rw')]);
    expect(diff.code, describeResult(diff)).toBe(1);
    expect(diff.stdout).toContain(`Content mismatch at offset ${7 * MiB}!`);
  });

  it('qemu-io write / read -P / write -z / discard; the served file holds exactly what was written', async () => {
    writeFileSync(tmp.file('rw.raw'), Buffer.alloc(16 * MiB, 0x11));
    const cmds = ['write -P 0xa5 1M 256k', 'write -P 0x5a 4095 8193', 'write -z 8M 1M', 'discard 12M 2M', 'read -P 0xa5 1M 256k', 'read -P 0 8M 1M', 'flush'];
    for (const [how, srv] of both()) {
      const args = ['-f', 'raw'];
      for (const c of cmds) args.push('-c', c);
      const r = await modern('qemu-io', [...args, srv.uri('rw')]);
      expect(r.code, describeResult(r) + serverComplaints(srv)).toBe(0);
      expect(r.stdout + r.stderr, how).not.toMatch(/Pattern verification failed|error/i);
      expect(r.stdout, how).toMatch(/discard 2097152\/2097152 bytes at offset 12582912/);
    }
    const img = readFileSync(tmp.file('rw.raw'));
    expect(img.subarray(MiB, MiB + 256 * 1024).every((b) => b === 0xa5)).toBe(true);
    expect(img.subarray(4095, 4095 + 8193).every((b) => b === 0x5a)).toBe(true);
    expect(img[4094]).toBe(0x11);
    expect(img[4095 + 8193]).toBe(0x11);
    expect(img.subarray(8 * MiB, 9 * MiB).every((b) => b === 0)).toBe(true);
    // TRIM may keep or drop data (the spec leaves it undefined); around it nothing changed.
    expect(img.subarray(11 * MiB, 12 * MiB).every((b) => b === 0x11)).toBe(true);
    expect(img.subarray(14 * MiB, 16 * MiB).every((b) => b === 0x11)).toBe(true);
  });

  it('qemu-io reads a read-only export with pattern checks, and is refused a write', async () => {
    const off = DATA[1]![0];
    const expectBytes = pattern(off, 4096, 5);
    const r = await modernOk('qemu-io', ['-r', '-f', 'raw', '-c', `read -v ${off} 16`, tcp.uri('disk')]);
    const firstHex = r.stdout.split('\n')[0]!.split(':')[1]!.trim().split(/\s+/).slice(0, 16).join('');
    expect(firstHex).toBe(expectBytes.subarray(0, 16).toString('hex'));
    const w = await modern('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', tcp.uri('disk')]);
    expect(w.code, describeResult(w)).not.toBe(0);
    expect(w.stderr + w.stdout).toMatch(/read.only|Operation not permitted|Permission denied/i);
  });
});

/**
 * The harness itself, against the reference server of the same generation (qemu-nbd 10 from
 * the root): extended headers are negotiated and qemu-io's writes and reads succeed. When this
 * fails the tier's tooling is broken; when only the cownbd tests above fail, cownbd is.
 */
describe.runIf(hasQemu && hasReference)('reference: qemu-nbd 10 from the same root', () => {
  let tmp: TempDir;
  let ref: ReturnType<typeof startModern>;
  let uri: string;

  beforeAll(async () => {
    tmp = makeTempDir();
    createRawImage(tmp.file('ref.raw'), 4 * MiB);
    uri = `nbd+unix:///ref?socket=${tmp.file('ref.sock')}`;
    ref = startModern('qemu-nbd', ['-t', '-k', tmp.file('ref.sock'), '-f', 'raw', '-x', 'ref', tmp.file('ref.raw')]);
    const deadline = Date.now() + 15_000;
    while ((await modern('nbdinfo', ['--size', uri])).code !== 0) {
      if (Date.now() > deadline) throw new Error(`qemu-nbd did not start:\n${ref.output()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  });
  afterAll(async () => {
    await ref?.stop();
    tmp?.cleanup();
  });

  it('negotiates extended packets and takes qemu-io writes (which carry no PAYLOAD_LEN)', async () => {
    const info = await modernOk('nbdinfo', [uri]);
    expect(info.stdout.split('\n')[0]).toBe('protocol: newstyle-fixed without TLS, using extended packets');
    const r = await modernOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3e 64k 64k', '-c', 'read -P 0x3e 64k 64k', uri]);
    expect(r.stdout + r.stderr, ref.output()).not.toMatch(/Pattern verification failed|error/i);
    expect(readFileSync(tmp.file('ref.raw')).subarray(64 * 1024, 128 * 1024).every((b) => b === 0x3e)).toBe(true);
  });
});
