/**
 * Test helper: TLS credentials made at test time with GnuTLS's certtool and psktool
 * (Debian gnutls-bin) — no key is ever committed. Layouts are the ones the real clients
 * and servers read:
 *
 *   <root>/server/  server-cert.pem server-key.pem ca-cert.pem   (cownbd, nbdkit --tls-certificates)
 *   <root>/<cn>/    client-cert.pem client-key.pem ca-cert.pem   (libnbd tls-certificates=,
 *                                                                 qemu tls-creds-x509 endpoint=client)
 *   <root>/rogue/   a client certificate with CN "alice" from ANOTHER CA (must be refused)
 *   <root>/keys.psk username:hexkey per user (psktool), for --tls-psk / tls-psk-file= /
 *                   qemu tls-creds-psk (which wants DIR/keys.psk)
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { requireTool } from './tools.js';

export interface TlsFixture {
  readonly root: string;
  /** Directory for the server (--tls-certificates). */
  readonly serverDir: string;
  /** Client directory for certificate CN `cn` (one of the names given). */
  clientDir(cn: string): string;
  /** Client directory whose certificate (CN alice) comes from an unrelated CA. */
  readonly rogueDir: string;
  /** Directory holding keys.psk (qemu's tls-creds-psk dir=). */
  readonly pskDir: string;
  /** The psktool file itself. */
  readonly pskFile: string;
}

/** True when certtool and psktool are installed (skip locally, fail under CI=true). */
export function requireTlsTools(): boolean {
  return requireTool('certtool') && requireTool('psktool');
}

function certtool(args: string[]): void {
  execFileSync('certtool', args, { stdio: 'pipe' });
}

function makeCa(dir: string, cn: string): { cert: string; key: string } {
  const key = path.join(dir, `${cn}-ca-key.pem`);
  const cert = path.join(dir, `${cn}-ca-cert.pem`);
  const tmpl = path.join(dir, `${cn}-ca.info`);
  writeFileSync(tmpl, `cn = ${cn}\nca\ncert_signing_key\nexpiration_days = 2\n`);
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', key]);
  certtool(['--generate-self-signed', '--load-privkey', key, '--template', tmpl, '--outfile', cert]);
  return { cert, key };
}

function issue(ca: { cert: string; key: string }, outDir: string, prefix: 'server' | 'client', cn: string): void {
  mkdirSync(outDir, { recursive: true });
  const key = path.join(outDir, `${prefix}-key.pem`);
  const tmpl = path.join(outDir, `${prefix}.info`);
  const usage = prefix === 'server' ? 'tls_www_server\ndns_name = localhost\nip_address = 127.0.0.1\n' : 'tls_www_client\n';
  writeFileSync(tmpl, `cn = ${cn}\n${usage}encryption_key\nsigning_key\nexpiration_days = 2\n`);
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', key]);
  certtool([
    '--generate-certificate', '--load-ca-certificate', ca.cert, '--load-ca-privkey', ca.key,
    '--load-privkey', key, '--template', tmpl, '--outfile', path.join(outDir, `${prefix}-cert.pem`),
  ]);
  copyFileSync(ca.cert, path.join(outDir, 'ca-cert.pem'));
}

/** Make a CA, a server certificate (CN localhost, IP 127.0.0.1), one client per CN, and PSK keys. */
export function makeTlsFixture(root: string, clients: readonly string[], pskUsers: readonly string[] = clients): TlsFixture {
  const caDir = path.join(root, 'ca');
  mkdirSync(caDir, { recursive: true });
  const ca = makeCa(caDir, 'cownbd-test-ca');
  issue(ca, path.join(root, 'server'), 'server', 'localhost');
  for (const cn of clients) issue(ca, path.join(root, cn), 'client', cn);
  const rogueCa = makeCa(caDir, 'rogue-ca');
  issue(rogueCa, path.join(root, 'rogue'), 'client', 'alice');
  const pskDir = path.join(root, 'psk');
  mkdirSync(pskDir, { recursive: true });
  const pskFile = path.join(pskDir, 'keys.psk');
  for (const user of pskUsers) execFileSync('psktool', ['-u', user, '-p', pskFile], { stdio: 'pipe' });
  return {
    root,
    serverDir: path.join(root, 'server'),
    clientDir: (cn) => path.join(root, cn),
    rogueDir: path.join(root, 'rogue'),
    pskDir,
    pskFile,
  };
}
