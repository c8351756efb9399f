/**
 * Failed TLS handshakes leave one line in the server's log, in words, naming the peer and
 * the identity offered (issue: a plaintext client left no trace, a wrong PSK logged OpenSSL's
 * raw text with a source path, a client rejecting the server's certificate showed up as
 * "read ECONNRESET"). Real clients: libnbd's nbdinfo with GnuTLS credentials made by
 * certtool/psktool at test time.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { nbdinfo, serverLog } from '../helpers/clients.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { makeTlsFixture, requireTlsTools } from '../helpers/tls-creds.js';
import { explainTlsFailure } from '../../src/server/tls-failure.js';

const usable = requireTlsTools() && requireTool('nbdinfo');

type Line = Record<string, unknown>;
/** The warn-level lines about connections (level 40), after the clients are done. */
const warnings = (lines: Line[]): Line[] => lines.filter((l) => l.level === 40);

describe.runIf(usable)('failed TLS handshakes are logged in words', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('X.509: plaintext client, no client certificate, a client that rejects the server certificate', async () => {
    const fx = makeTlsFixture(tmp.file('tls'), ['alice']);
    createRawImage(tmp.file('x.raw'), 1 << 20);
    const srv = await startServer(['--export', `pub=${tmp.file('x.raw')}`, '--tls', 'require', '--tls-certificates', fx.serverDir, '--tls-verify-peer']);
    try {
      const cases: Array<[string, RegExp]> = [
        [`nbd://127.0.0.1:${srv.port}/pub`, /client did not start TLS: this server requires it/],
        [`nbds://127.0.0.1:${srv.port}/pub`, /the client sent no certificate \(--tls-verify-peer requires one/],
        // The rogue client trusts another CA, so it is the one that gives up.
        [`nbds://127.0.0.1:${srv.port}/pub?tls-certificates=${fx.rogueDir}`, /it most likely rejected the server's certificate \(the certificate must name the host/],
      ];
      for (const [uri, expected] of cases) {
        const before = warnings(serverLog(srv)).length;
        const r = await nbdinfo([uri]);
        expect(r.status, uri).not.toBe(0);
        await expect.poll(() => warnings(serverLog(srv)).length, { timeout: 10_000 }).toBe(before + 1);
        const line = warnings(serverLog(srv)).at(-1)!;
        const text = `${String(line.msg)} ${String(line.reason ?? '')}`;
        expect(text, JSON.stringify(line)).toMatch(expected);
        expect(String(line.peer)).toMatch(/^127\.0\.0\.1:\d+$/);
        expect(text).not.toMatch(/\.c:\d+|deps\/openssl|ECONNRESET/);
      }
    } finally {
      await srv.stop();
    }
  });

  it('PSK: a wrong key names the identity offered; OpenSSL text and paths stay out', async () => {
    const fx = makeTlsFixture(tmp.file('tls-psk'), ['alice']);
    createRawImage(tmp.file('p.raw'), 1 << 20);
    const srv = await startServer(['--export', `pub=${tmp.file('p.raw')}`, '--tls', 'require', '--tls-psk', fx.pskFile]);
    try {
      writeFileSync(tmp.file('wrong.psk'), 'alice:00112233445566778899aabbccddeeff\n');
      const r = await nbdinfo([`nbds://alice@127.0.0.1:${srv.port}/pub?tls-psk-file=${tmp.file('wrong.psk')}`]);
      expect(r.status).not.toBe(0);
      await expect.poll(() => warnings(serverLog(srv)).length, { timeout: 10_000 }).toBe(1);
      const line = warnings(serverLog(srv))[0]!;
      expect(String(line.reason)).toMatch(/TLS handshake failed: wrong PSK key for identity "alice"/);
      expect(String(line.reason)).not.toMatch(/\.c:\d+|deps\/openssl|routines/);
    } finally {
      await srv.stop();
    }
  });

  it('unknown OpenSSL reasons keep the short reason, never the source path', () => {
    const raw = new Error('40ADEC32B57F0000:error:0A0000FF:SSL routines:tls_something:some new reason:../deps/openssl/openssl/ssl/x.c:12:\n');
    expect(explainTlsFailure(raw, 'x509', undefined)).toBe('TLS error: some new reason');
    expect(explainTlsFailure(Object.assign(new Error('x'), { code: 'ERR_SSL_NO_SHARED_CIPHER' }), 'psk', undefined)).toMatch(/this server uses TLS-PSK/);
  });
});
