/**
 * Modern tier: today's clients through TLS (X.509 with client certificates made by
 * test/helpers/tls-creds.ts): libnbd 1.22 (nbdinfo, nbdcopy), qemu 10 (qemu-img, qemu-io
 * with tls-creds-x509) and nbd-client 3.26 -l, all from the trixie root
 * (docs/modern-clients.md). Extended headers are negotiated after STARTTLS, so the [ext]
 * titles depend on EXTENDED_HEADERS_EXPECTED (test/helpers/modern.ts) here too.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeResult } from '../helpers/clients.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { EXPECTED_PACKETS, EXTENDED_HEADERS_EXPECTED, modern, modernNbdinfoJson, modernOk, requireModernTool, serverComplaints } from '../helpers/modern.js';
import { startServer, type RunningServer } from '../helpers/server.js';
import { makeTlsFixture, requireTlsTools, type TlsFixture } from '../helpers/tls-creds.js';

const MiB = 1024 * 1024;
const hasTls = requireTlsTools();
const hasLibnbd = requireModernTool('nbdinfo', 'nbdcopy');
const hasQemu = requireModernTool('qemu-img', 'qemu-io');
const hasNbdClient = requireModernTool('nbd-client');

describe.runIf(hasTls && (hasLibnbd || hasQemu || hasNbdClient))('today\'s clients through TLS (--tls require --tls-verify-peer)', () => {
  let tmp: TempDir;
  let fx: TlsFixture;
  let srv: RunningServer;
  const url = (name: string, who = 'alice') => `nbds://127.0.0.1:${srv.port}/${name}?tls-certificates=${fx.clientDir(who)}`;

  beforeAll(async () => {
    tmp = makeTempDir();
    fx = makeTlsFixture(tmp.file('tls'), ['alice']);
    createRawImage(tmp.file('disk.raw'), 8 * MiB, [[MiB, MiB]], 3);
    srv = await startServer([
      '--export', `disk=${tmp.file('disk.raw')},description=TLS disk`,
      '--tls', 'require', '--tls-certificates', fx.serverDir, '--tls-verify-peer',
    ]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it.runIf(hasLibnbd)('[ext] nbdinfo: "with TLS", the packet style, and --list', async () => {
    const r = await modernOk('nbdinfo', [url('disk')]);
    expect(r.stdout.split('\n')[0]).toBe(`protocol: newstyle-fixed with TLS, using ${EXPECTED_PACKETS} packets`);
    const doc = await modernNbdinfoJson(url('disk'));
    expect(doc.TLS).toBe(true);
    expect(doc.extended).toBe(EXTENDED_HEADERS_EXPECTED);
    expect(doc.exports[0]!['export-size']).toBe(8 * MiB);
    const list = await modernNbdinfoJson(url(''), ['--list']);
    expect(list.exports.map((e) => [e['export-name'], e.description])).toEqual([['disk', 'TLS disk']]);
  });

  it.runIf(hasLibnbd)('nbdinfo without a client certificate is refused', async () => {
    const r = await modern('nbdinfo', [`nbd://127.0.0.1:${srv.port}/disk`]);
    expect(r.code, describeResult(r)).not.toBe(0);
  });

  it.runIf(hasLibnbd)('nbdcopy both ways through TLS', async () => {
    const src = tmp.file('src.bin');
    const data = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), randomBytes(3 * MiB)]);
    writeFileSync(src, data);
    await modernOk('nbdcopy', ['--flush', src, url('disk')]);
    expect(readFileSync(tmp.file('disk.raw')).equals(data)).toBe(true);
    const back = tmp.file('back.bin');
    await modernOk('nbdcopy', [url('disk'), back]);
    expect(readFileSync(back).equals(data)).toBe(true);
  });

  it.runIf(hasQemu)('qemu-img info and qemu-io write / read through tls-creds-x509', async () => {
    const obj = `tls-creds-x509,id=tls0,dir=${fx.clientDir('alice')},endpoint=client`;
    const opts = `driver=nbd,host=127.0.0.1,port=${srv.port},export=disk,tls-creds=tls0`;
    const info = await modernOk('qemu-img', ['info', '--output=json', '--object', obj, '--image-opts', opts]);
    expect((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size']).toBe(8 * MiB);
    const io = await modern('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'write -P 0x6b 6M 128k', '-c', 'read -P 0x6b 6M 128k', '-c', 'flush']);
    expect(io.code, describeResult(io) + serverComplaints(srv)).toBe(0);
    expect(io.stdout + io.stderr).not.toMatch(/Pattern verification failed|error/i);
    expect(readFileSync(tmp.file('disk.raw')).subarray(6 * MiB, 6 * MiB + 128 * 1024).every((b) => b === 0x6b)).toBe(true);
    // Converting through TLS reads the same bytes the file holds.
    const out = tmp.file('conv.raw');
    await modernOk('qemu-img', ['convert', '--object', obj, '--image-opts', opts, '-O', 'raw', out]);
    expect(readFileSync(out).equals(readFileSync(tmp.file('disk.raw')))).toBe(true);
  });

  it.runIf(hasNbdClient)('nbd-client -l (3.26) lists with -certfile/-keyfile/-cacertfile and is refused without', async () => {
    const bare = await modern('nbd-client', ['-l', '127.0.0.1', String(srv.port)], { timeoutMs: 15_000 });
    expect(bare.code, describeResult(bare)).not.toBe(0);
    expect(bare.stderr).toContain('TLS is required');
    const dir = fx.clientDir('alice');
    const r = await modern(
      'nbd-client',
      ['-certfile', `${dir}/client-cert.pem`, '-keyfile', `${dir}/client-key.pem`, '-cacertfile', `${dir}/ca-cert.pem`, '-l', '127.0.0.1', String(srv.port)],
      { timeoutMs: 15_000 },
    );
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.stdout.split('\n').filter((l) => l && !l.startsWith('Negotiation'))).toEqual(['disk: TLS disk']);
  });
});
