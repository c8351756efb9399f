/**
 * --tls require at the wire level, with the raw client (what well-behaved libraries never
 * send): nothing about exports before STARTTLS, EXPORT_NAME closes, plaintext smuggled
 * behind STARTTLS closes, STARTTLS with data is invalid.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { startServer, type RunningServer } from '../helpers/server.js';
import { OPT, RawClient, infoData, metaData, optionRequest } from '../helpers/nbd-fixtures.js';
import { serverLog } from '../helpers/clients.js';
import { makeTlsFixture, requireTlsTools } from '../helpers/tls-creds.js';
import { requireTool } from '../helpers/tools.js';

const ERR_TLS_REQD = 0x80000005;
const ERR_INVALID = 0x80000003;
const ACK = 1;
const hasTls = requireTlsTools();

describe.runIf(hasTls)('--tls require before STARTTLS', () => {
  let tmp: TempDir;
  let srv: RunningServer;

  beforeAll(async () => {
    tmp = makeTempDir();
    const fx = makeTlsFixture(tmp.file('tls'), []);
    createRawImage(tmp.file('secret.raw'), 1024 * 1024);
    srv = await startServer([tmp.file('secret.raw'), '-n', 'secret-name', '--description', 'secret description', '--tls', 'require', '--tls-certificates', fx.serverDir]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('answers LIST, INFO, GO and meta-context queries with ERR_TLS_REQD and leaks nothing', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    const asks = [
      optionRequest(OPT.LIST),
      optionRequest(OPT.INFO, infoData('secret-name')),
      optionRequest(OPT.INFO, infoData('no-such-export')),
      optionRequest(OPT.GO, infoData('secret-name')),
      optionRequest(OPT.LIST_META, metaData('secret-name', [])),
      optionRequest(OPT.STRUCTURED_REPLY),
      optionRequest(11), // EXTENDED_HEADERS: refused like every option before TLS
      optionRequest(99),
    ];
    const replies = [];
    for (const a of asks) {
      c.write(a);
      replies.push(await c.readOptionReply());
    }
    expect(replies.map((r) => r.type)).toEqual(asks.map(() => ERR_TLS_REQD));
    // Same message whatever was asked; no name, description or size anywhere.
    expect(new Set(replies.map((r) => r.data.toString())).size).toBe(1);
    for (const r of replies) expect(r.data.toString()).not.toMatch(/secret/);
    c.write(optionRequest(OPT.ABORT));
    expect((await c.readOptionReply()).type).toBe(ACK);
    expect(await c.closedByServer()).toBe(true);
  });

  it('closes the connection on EXPORT_NAME before TLS', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    c.write(optionRequest(OPT.EXPORT_NAME, Buffer.from('secret-name')));
    expect(await c.closedByServer()).toBe(true);
  });

  it('rejects STARTTLS with data (ERR_INVALID) and plaintext sent right behind STARTTLS', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    c.write(optionRequest(OPT.STARTTLS, Buffer.from('x')));
    expect((await c.readOptionReply()).type).toBe(ERR_INVALID);
    // An attacker in the middle appends plaintext to STARTTLS hoping it is read as TLS-protected.
    c.write(Buffer.concat([optionRequest(OPT.STARTTLS), optionRequest(OPT.LIST)]));
    expect((await c.readOptionReply()).type).toBe(ACK);
    expect(await c.closedByServer()).toBe(true);
    await expect.poll(() => serverLog(srv).some((l) => String(l.reason).includes('after STARTTLS before the TLS handshake'))).toBe(true);
  });
});

describe.runIf(hasTls)('serve refuses a bad security configuration at start-up, naming the problem', () => {
  let tmp: TempDir;
  let fx: ReturnType<typeof makeTlsFixture>;
  beforeAll(() => {
    tmp = makeTempDir();
    fx = makeTlsFixture(tmp.file('tls'), []);
    createRawImage(tmp.file('d.raw'), 1024 * 1024);
    createRawImage(tmp.file('x.raw'), 1024 * 1024);
    writeFileSync(tmp.file('bad.psk'), 'vm1:xyz\n');
  });
  afterAll(() => tmp?.cleanup());

  it.each([
    [['--tls', 'require'], /--tls require needs --tls-certificates DIR or --tls-psk FILE/],
    [['--tls-psk', 'PSK'], /--tls-certificates\/--tls-psk need --tls on or --tls require/],
    [['--tls', 'on', '--tls-certificates', 'CERTS', '--tls-psk', 'PSK'], /either --tls-certificates or --tls-psk, not both/],
    [['--tls', 'on', '--tls-certificates', 'NOWHERE'], /cannot read .*nowhere\/server-cert\.pem/],
    [['--tls', 'on', '--tls-psk', 'BAD'], /bad\.psk line 1: the key of "vm1" is not an even number of hex digits/],
    [['--tls', 'on', '--tls-verify-peer', '--tls-psk', 'PSK'], /--tls-verify-peer needs --tls-certificates/],
    [['--export', 'x=IMG,allow=vm1'], /allow= needs client identities/],
    [['--tls', 'on', '--tls-certificates', 'CERTS', '--export', 'x=IMG,allow=vm1'], /allow= needs client identities/],
    [['--tls', 'maybe'], /--tls.*maybe/],
    [['--min-free', 'lots'], /invalid --min-free "lots"/],
  ])('%j', async (args, message) => {
    const subst: Record<string, string> = { PSK: fx.pskFile, CERTS: fx.serverDir, NOWHERE: tmp.file('nowhere'), BAD: tmp.file('bad.psk') };
    const argv = args.map((a) => subst[a] ?? a.replace('IMG', tmp.file('x.raw')));
    await expect(startServer([tmp.file('d.raw'), ...argv])).rejects.toThrow(message);
  });
});

describe.runIf(hasTls)('TLS versions and PSK suites (Node client on the raw socket)', () => {
  let tmp: TempDir;
  let srv: RunningServer;
  let psk: Buffer;

  beforeAll(async () => {
    tmp = makeTempDir();
    const fx = makeTlsFixture(tmp.file('tls'), [], ['alice']);
    psk = Buffer.from(readFileSync(fx.pskFile, 'utf8').trim().split(':')[1]!, 'hex');
    createRawImage(tmp.file('d.raw'), 1024 * 1024);
    srv = await startServer([tmp.file('d.raw'), '-n', 'd', '--tls', 'require', '--tls-psk', fx.pskFile]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  /** STARTTLS in plaintext, then a TLS client with `options`; resolves to the TLS socket or the error. */
  async function startTls(options: tls.ConnectionOptions): Promise<tls.TLSSocket | Error> {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    c.write(optionRequest(OPT.STARTTLS));
    expect((await c.readOptionReply()).type).toBe(ACK);
    c.socket.removeAllListeners('data');
    return new Promise((resolve) => {
      const s = tls.connect({ socket: c.socket, pskCallback: () => ({ identity: 'alice', psk }), checkServerIdentity: () => undefined, ...options });
      s.once('secureConnect', () => resolve(s));
      s.once('error', (err) => resolve(err));
    });
  }

  it('TLS 1.2 with a PSK suite serves LIST inside TLS', async () => {
    const s = await startTls({ maxVersion: 'TLSv1.2', ciphers: 'PSK-AES128-GCM-SHA256' });
    expect(s).toBeInstanceOf(tls.TLSSocket);
    const t = s as tls.TLSSocket;
    expect(t.getProtocol()).toBe('TLSv1.2');
    expect(t.getCipher().name).toMatch(/PSK/);
    const reply = new Promise<Buffer>((resolve) => t.once('data', resolve));
    t.write(optionRequest(OPT.LIST));
    const r = await reply;
    expect(r.readUInt32BE(12)).toBe(2); // NBD_REP_SERVER: the export list, now that TLS is up
    t.destroy();
  });

  it('TLS 1.3 with the PSK is accepted', async () => {
    const s = await startTls({ minVersion: 'TLSv1.3' });
    expect((s as tls.TLSSocket).getProtocol?.()).toBe('TLSv1.3');
    (s as tls.TLSSocket).destroy();
  });

  it('TLS 1.1 is refused', async () => {
    const s = await startTls({ minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'PSK-AES128-CBC-SHA:@SECLEVEL=0' });
    // The server answers with a protocol_version alert (70) and logs why.
    expect(String(s)).toMatch(/alert protocol version/);
    await expect.poll(() => serverLog(srv).some((l) => /TLS handshake failed: the client offered only TLS versions older than 1\.2/.test(String(l.reason))), { timeout: 5000 }).toBe(true);
  });
});

describe.runIf(hasTls)('--tls on: header styles negotiated in plaintext do not survive STARTTLS', () => {
  let tmp: TempDir;
  let srv: RunningServer;
  let psk: Buffer;
  const EXTENDED_HEADERS = 11;

  beforeAll(async () => {
    tmp = makeTempDir();
    const fx = makeTlsFixture(tmp.file('tls'), [], ['alice']);
    psk = Buffer.from(readFileSync(fx.pskFile, 'utf8').trim().split(':')[1]!, 'hex');
    createRawImage(tmp.file('d.raw'), 1024 * 1024);
    srv = await startServer([tmp.file('d.raw'), '-n', 'd', '--tls', 'on', '--tls-psk', fx.pskFile]);
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('EXTENDED_HEADERS before STARTTLS is forgotten: inside TLS STRUCTURED_REPLY and EXTENDED_HEADERS are fresh', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    c.write(optionRequest(EXTENDED_HEADERS));
    expect((await c.readOptionReply()).type).toBe(ACK);
    c.write(optionRequest(OPT.STARTTLS));
    expect((await c.readOptionReply()).type).toBe(ACK);
    c.socket.removeAllListeners('data');
    const t = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: c.socket, pskCallback: () => ({ identity: 'alice', psk }), checkServerIdentity: () => undefined });
      s.once('secureConnect', () => resolve(s));
      s.once('error', reject);
    });
    const inner = RawClient.wrap(t);
    try {
      // Were extended headers still on, these would be ERR_EXT_HEADER_REQD and ERR_INVALID.
      inner.write(optionRequest(OPT.STRUCTURED_REPLY));
      expect((await inner.readOptionReply()).type).toBe(ACK);
      inner.write(optionRequest(EXTENDED_HEADERS));
      expect((await inner.readOptionReply()).type).toBe(ACK);
    } finally {
      inner.close();
    }
  });
});

describe.runIf(hasTls && requireTool('openssl'))('TLS 1.2 renegotiation is refused and logged at warn (issue 26.11)', () => {
  let tmp: TempDir;
  let srv: RunningServer;
  let bridge: net.Server;
  const RENEG = 'closing connection: client tried to renegotiate TLS (refused)';

  beforeAll(async () => {
    tmp = makeTempDir();
    const fx = makeTlsFixture(tmp.file('tls'), []);
    createRawImage(tmp.file('d.raw'), 1024 * 1024);
    srv = await startServer([tmp.file('d.raw'), '--tls', 'require', '--tls-certificates', fx.serverDir]);
    // openssl s_client knows no NBD STARTTLS: this bridge does the plaintext part (greeting,
    // STARTTLS, ACK) and then relays bytes, so s_client's TLS runs end to end with the server.
    bridge = net.createServer((front) => {
      front.pause();
      void (async () => {
        const c = await RawClient.connect({ port: srv.port! });
        await c.greet();
        c.write(optionRequest(OPT.STARTTLS));
        expect((await c.readOptionReply()).type).toBe(ACK);
        c.socket.removeAllListeners('data');
        front.pipe(c.socket).on('error', () => undefined);
        c.socket.pipe(front).on('error', () => undefined);
        front.on('close', () => c.socket.destroy());
        c.socket.on('close', () => front.destroy());
        front.resume();
      })();
    });
    await new Promise<void>((resolve) => bridge.listen(0, '127.0.0.1', resolve));
  });
  afterAll(async () => {
    bridge?.close();
    await srv?.stop();
    tmp?.cleanup();
  });

  /** s_client over TLS 1.2 typing `R` (renegotiate) `times` times; resolves with its output and exit time. */
  async function sClientRenegotiating(times: number): Promise<{ out: string; closedAfter: number | undefined }> {
    const port = (bridge.address() as net.AddressInfo).port;
    const ossl = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-tls1_2'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    ossl.stdout.on('data', (d: Buffer) => (out += d.toString()));
    ossl.stderr.on('data', (d: Buffer) => (out += d.toString()));
    ossl.stdin.on('error', () => undefined);
    const exited = new Promise<void>((resolve) => ossl.once('exit', () => resolve()));
    await expect.poll(() => out.includes('Verify return code'), { timeout: 10_000 }).toBe(true); // TLS is up
    let closedAfter: number | undefined;
    for (let i = 1; i <= times; i++) {
      ossl.stdin.write('R\n');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 300))]);
      if (ossl.exitCode !== null || ossl.signalCode !== null) {
        closedAfter = i;
        break;
      }
    }
    ossl.stdin.end(); // s_client exits on EOF if the server did not close first
    await exited;
    return { out, closedAfter };
  }

  it('the first R closes the connection; the attempt is logged at warn', async () => {
    const { out, closedAfter } = await sClientRenegotiating(20);
    expect(out).toContain('RENEGOTIATING');
    expect(closedAfter, out).toBe(1);
    await expect.poll(() => serverLog(srv).filter((l) => l.msg === RENEG && l.level === 40)).toHaveLength(1);
  });

  it('a client that does not renegotiate is served normally over TLS 1.2', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    c.write(optionRequest(OPT.STARTTLS));
    expect((await c.readOptionReply()).type).toBe(ACK);
    c.socket.removeAllListeners('data');
    const t = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: c.socket, maxVersion: 'TLSv1.2', rejectUnauthorized: false });
      s.once('secureConnect', () => resolve(s));
      s.once('error', reject);
    });
    const reply = new Promise<Buffer>((resolve) => t.once('data', resolve));
    t.write(optionRequest(OPT.LIST));
    expect((await reply).readUInt32BE(12)).toBe(2); // NBD_REP_SERVER
    t.destroy();
  });
});
