/**
 * TLS with real clients (docs/tls.md): X.509 with client certificates and TLS-PSK,
 * through libnbd (nbdinfo, nbdcopy, python nbd), QEMU (qemu-img/qemu-io with
 * tls-creds-x509 / tls-creds-psk) and nbd-client -l. Credentials are made at test time
 * (test/helpers/tls-creds.ts). Per-export allow= lists are checked with two identities.
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { describeResult, mustSucceed, nbdcopy, nbdinfo, nbdinfoJson, qemuIo, runTool, serverLog } from '../helpers/clients.js';
import { requireTool } from '../helpers/tools.js';
import { makeTlsFixture, requireTlsTools, type TlsFixture } from '../helpers/tls-creds.js';
import { PRELUDE, lastJson } from '../server/py-prelude.js';

const MiB = 1024 * 1024;
const hasTls = requireTlsTools();
const hasLibnbd = requireTool('nbdinfo') && requireTool('nbdcopy');
const hasQemu = requireTool('qemu-io');
const hasNbdClient = requireTool('nbd-client');
const hasPy = requireNbdPython();

describe.runIf(hasTls && hasLibnbd)('TLS X.509 with client certificates (--tls require --tls-verify-peer)', () => {
  let tmp: TempDir;
  let fx: TlsFixture;
  let srv: RunningServer;
  const url = (name: string, who: string, host = '127.0.0.1') => `nbds://${host}:${srv.port}/${name}?tls-certificates=${fx.clientDir(who)}`;

  beforeAll(async () => {
    tmp = makeTempDir();
    fx = makeTlsFixture(tmp.file('tls'), ['alice', 'bob']);
    createRawImage(tmp.file('pub.raw'), 4 * MiB);
    createRawImage(tmp.file('priv.raw'), 8 * MiB);
    srv = await startServer([
      '--export', `pub=${tmp.file('pub.raw')}`,
      '--export', `priv=${tmp.file('priv.raw')},allow=alice`,
      '--tls', 'require', '--tls-certificates', fx.serverDir, '--tls-verify-peer',
    ]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('prints an nbds:// URI and serves a client with a certificate from the CA', async () => {
    expect(srv.uris[0]).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/pub$/);
    const doc = await nbdinfoJson(url('pub', 'alice'));
    expect(doc.TLS).toBe(true);
    expect(doc.exports[0]!['export-size']).toBe(4 * MiB);
  });

  it('names the identity (certificate CN) on the connection log lines', async () => {
    mustSucceed(await nbdinfo([url('pub', 'bob')]));
    await expect.poll(() => serverLog(srv).some((l) => l.msg === 'connection closed' && l.identity === 'bob')).toBe(true);
    const lines = serverLog(srv).filter((l) => l.msg === 'TLS established');
    expect(lines.map((l) => l.identity)).toContain('bob');
    expect(lines.every((l) => typeof l.protocol === 'string' && /^TLSv1\.[23]$/.test(l.protocol))).toBe(true);
    // Every later line of bob's connection carries the identity.
    const conn = lines.find((l) => l.identity === 'bob')!.conn;
    const after = serverLog(srv).filter((l) => l.conn === conn && ['connection opened', 'connection closed'].includes(String(l.msg)));
    expect(after.map((l) => [l.msg, l.identity])).toEqual([['connection opened', 'bob'], ['connection closed', 'bob']]);
  });

  it('nbdcopy writes and reads back through TLS', async () => {
    const data = randomBytes(2 * MiB);
    const src = tmp.file('src.bin');
    const back = tmp.file('back.bin');
    writeFileSync(src, Buffer.concat([data, Buffer.alloc(6 * MiB)]));
    mustSucceed(await nbdcopy([src, url('priv', 'alice')]));
    mustSucceed(await nbdcopy([url('priv', 'alice'), back]));
    expect(readFileSync(back).subarray(0, 2 * MiB).equals(data)).toBe(true);
    expect(readFileSync(tmp.file('priv.raw')).subarray(0, 2 * MiB).equals(data)).toBe(true);
  });

  it('allow= hides the export from other identities in LIST and refuses to open it', async () => {
    const listOf = async (who: string) =>
      (await nbdinfoJson(url('', who), ['--list'])).exports.map((e) => e['export-name']).sort();
    expect(await listOf('alice')).toEqual(['priv', 'pub']);
    expect(await listOf('bob')).toEqual(['pub']);
    const r = await nbdinfo([url('priv', 'bob')]);
    expect(r.code, describeResult(r)).not.toBe(0);
    expect(r.stderr).toMatch(/not present|unknown|No such/i);
    // Indistinguishable from a missing export: same reply as a name that does not exist.
    const missing = await nbdinfo([url('nosuch', 'bob')]);
    expect(missing.stderr.replaceAll('nosuch', 'X')).toBe(r.stderr.replaceAll('priv', 'X'));
    // One warning per refused name and connection, with the reason (handshake.ts logRefused).
    await expect.poll(() => serverLog(srv).filter((l) => l.msg === 'refused export name' && l.export === 'priv')).toHaveLength(1);
    const warn = serverLog(srv).filter((l) => l.msg === 'refused export name' && l.export === 'priv');
    expect(warn[0]?.identity).toBe('bob');
    expect(warn[0]?.reason).toBe('identity "bob" not allowed');
    expect(warn[0]?.level).toBe(40);
  });

  it('refuses plain nbd:// (TLS required) and a certificate from another CA', async () => {
    const plain = await nbdinfo([`nbd://127.0.0.1:${srv.port}/pub`]);
    expect(plain.code, describeResult(plain)).not.toBe(0);
    const rogue = await nbdinfo([`nbds://127.0.0.1:${srv.port}/pub?tls-certificates=${fx.rogueDir}`]);
    expect(rogue.code, describeResult(rogue)).not.toBe(0);
    await expect.poll(() => serverLog(srv).some((l) => String(l.reason).startsWith('TLS handshake failed'))).toBe(true);
  });

  it.runIf(hasQemu)('qemu-io writes and reads through tls-creds-x509', async () => {
    const obj = `tls-creds-x509,id=tls0,dir=${fx.clientDir('alice')},endpoint=client`;
    const opts = `driver=nbd,host=127.0.0.1,port=${srv.port},export=priv,tls-creds=tls0`;
    const w = await runTool('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'write -P 0x5a 1M 64k']);
    expect(w.code, describeResult(w)).toBe(0);
    const rd = await runTool('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'read -P 0x5a 1M 64k']);
    expect(rd.code, describeResult(rd)).toBe(0);
    expect(rd.stdout + rd.stderr).not.toMatch(/Pattern verification failed/);
    const info = await runTool('qemu-img', ['info', '--object', obj, '--image-opts', opts]);
    expect(info.code, describeResult(info)).toBe(0);
    expect(info.stdout).toContain('8 MiB');
  });

  it.runIf(hasNbdClient)('nbd-client -l: refused cleanly without certificates, lists with -certfile/-keyfile/-cacertfile', async () => {
    const bare = await runTool('nbd-client', ['-l', '127.0.0.1', String(srv.port)], { timeoutMs: 15_000 });
    expect(bare.code, describeResult(bare)).not.toBe(0);
    expect(bare.stderr).toContain('TLS is required');
    const dir = fx.clientDir('bob');
    const withCert = await runTool(
      'nbd-client',
      ['-certfile', `${dir}/client-cert.pem`, '-keyfile', `${dir}/client-key.pem`, '-cacertfile', `${dir}/ca-cert.pem`, '-l', '127.0.0.1', String(srv.port)],
      { timeoutMs: 15_000 },
    );
    expect(withCert.code, describeResult(withCert)).toBe(0);
    // bob may not see "priv".
    expect(withCert.stdout.split('\n').filter((l) => l && !l.startsWith('Negotiation'))).toEqual(['pub']);
  });
});

describe.runIf(hasTls && hasLibnbd)('TLS-PSK (--tls require --tls-psk)', () => {
  let tmp: TempDir;
  let fx: TlsFixture;
  let srv: RunningServer;

  beforeAll(async () => {
    tmp = makeTempDir();
    fx = makeTlsFixture(tmp.file('tls'), [], ['alice', 'vm7']);
    createRawImage(tmp.file('d.raw'), 4 * MiB);
    srv = await startServer([tmp.file('d.raw'), '-n', 'd', '--tls', 'require', '--tls-psk', fx.pskFile]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('nbdinfo connects as a PSK user; the username is the identity', async () => {
    const doc = await nbdinfoJson(`nbds://vm7@127.0.0.1:${srv.port}/d?tls-psk-file=${fx.pskFile}`);
    expect(doc.TLS).toBe(true);
    await expect.poll(() => serverLog(srv).filter((l) => l.msg === 'TLS established').map((l) => l.identity)).toContain('vm7');
  });

  it('refuses an unknown PSK user and a wrong key', async () => {
    const other = tmp.file('other.psk');
    writeFileSync(other, `carol:${randomBytes(32).toString('hex')}\nalice:${randomBytes(32).toString('hex')}\n`);
    for (const user of ['carol', 'alice']) {
      const r = await nbdinfo([`nbds://${user}@127.0.0.1:${srv.port}/d?tls-psk-file=${other}`]);
      expect(r.code, describeResult(r)).not.toBe(0);
    }
    await expect.poll(() => serverLog(srv).some((l) => String(l.reason).includes('unknown PSK identity "carol"'))).toBe(true);
  });

  it.runIf(hasPy)('python nbd writes and reads through TLS-PSK', async () => {
    const out = await nbdPython(
      `
import nbd
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_psk_file(PSK)
h.set_tls_username('alice')
h.set_export_name('d')
h.connect_tcp('127.0.0.1', str(PORT))
h.pwrite(b'\\xab' * 65536, 4096)
h.flush()
print(h.pread(65536, 4096) == b'\\xab' * 65536, h.get_tls_username() if hasattr(h, 'get_tls_username') else 'alice')
`,
      { PSK: fx.pskFile, PORT: srv.port },
    );
    expect(out.trim().split(' ')[0]).toBe('True');
  });

  it.runIf(hasQemu)('qemu-io writes and reads through tls-creds-psk', async () => {
    const obj = `tls-creds-psk,id=tls0,dir=${fx.pskDir},username=alice,endpoint=client`;
    const opts = `driver=nbd,host=127.0.0.1,port=${srv.port},export=d,tls-creds=tls0`;
    const r = await runTool('qemu-io', ['--object', obj, '--image-opts', opts, '-c', 'write -P 0x3c 0 128k', '-c', 'read -P 0x3c 0 128k']);
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.stdout + r.stderr).not.toMatch(/Pattern verification failed|error/i);
  });
});

describe.runIf(hasTls && hasLibnbd)('--tls on: TLS offered, plaintext still served', () => {
  let tmp: TempDir;
  let fx: TlsFixture;
  let srv: RunningServer;

  beforeAll(async () => {
    tmp = makeTempDir();
    fx = makeTlsFixture(tmp.file('tls'), ['alice']);
    createRawImage(tmp.file('d.raw'), 2 * MiB);
    srv = await startServer([tmp.file('d.raw'), '-n', 'd', '--tls', 'on', '--tls-certificates', fx.serverDir]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('serves nbd:// in plaintext and nbds:// with TLS (server certificate only)', async () => {
    expect(srv.uris[0]).toMatch(/^nbd:\/\//);
    expect((await nbdinfoJson(`nbd://127.0.0.1:${srv.port}/d`)).TLS).toBe(false);
    expect((await nbdinfoJson(`nbds://127.0.0.1:${srv.port}/d?tls-certificates=${fx.clientDir('alice')}`)).TLS).toBe(true);
  });

  it.runIf(hasQemu)('qemu-io reads through TLS without a client certificate being required', async () => {
    const r = await qemuIo(`nbd://127.0.0.1:${srv.port}/d`, ['read -P 0 0 64k'], { readOnly: true });
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.patternFailures).toBe(0);
  });
});

describe.runIf(hasTls && hasPy)('--overlay-dir-match-identity: each machine reaches only its own overlay', () => {
  let tmp: TempDir;
  let fx: TlsFixture;
  let srv: RunningServer;

  beforeAll(async () => {
    tmp = makeTempDir();
    fx = makeTlsFixture(tmp.file('tls'), [], ['vm7', 'vm8']);
    createRawImage(tmp.file('golden.raw'), 4 * MiB);
    srv = await startServer([
      '--base', tmp.file('golden.raw'), '--overlay-dir', tmp.file('vms'), '--overlay-dir-match-identity',
      '--tls', 'require', '--tls-psk', fx.pskFile,
    ]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  const asMachine = (user: string, name: string) =>
    nbdPython(
      PRELUDE +
        `
def attempt():
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(PSK)
    h.set_tls_username(USER)
    h.set_export_name(NAME)
    h.set_opt_mode(True)
    h.connect_tcp('127.0.0.1', str(PORT))
    names = []
    h.opt_list(lambda n, d: names.append(n) or 0)
    try:
        h.opt_go()
    except nbd.Error:
        return {"opened": False, "list": sorted(names)}
    h.pwrite(USER.encode().ljust(512, b'.'), 0)
    h.flush()
    return {"opened": True, "list": sorted(names)}
out(attempt())
`,
      { PSK: fx.pskFile, USER: user, NAME: name, PORT: srv.port },
    ).then((o) => lastJson<{ opened: boolean; list: string[] }>(o));

  it('opens the own overlay, refuses another machine\'s, lists only its own', async () => {
    expect(await asMachine('vm7', 'vm7')).toEqual({ opened: true, list: [] });
    expect(await asMachine('vm8', 'vm8')).toEqual({ opened: true, list: [] });
    expect(await asMachine('vm7', 'vm8')).toEqual({ opened: false, list: ['vm7'] });
    expect(await asMachine('vm8', 'vm9')).toEqual({ opened: false, list: ['vm8'] });
    expect(readdirSync(tmp.file('vms')).sort()).toEqual(['vm7.cow', 'vm8.cow']);
    const refused = () => serverLog(srv).filter((l) => l.msg === 'refused export name').map((l) => [l.identity, l.export, l.reason]);
    await expect.poll(refused).toEqual([
      ['vm7', 'vm8', 'identity "vm7" not allowed'],
      ['vm8', 'vm9', 'identity "vm8" not allowed'],
    ]);
  });

  it('refuses to start without TLS identities', async () => {
    await expect(startServer(['--base', tmp.file('golden.raw'), '--overlay-dir', tmp.file('x'), '--overlay-dir-match-identity'])).rejects.toThrow(
      /--overlay-dir-match-identity needs client identities/,
    );
  });
});
