// TLS for the benchmark's "-tls" targets (cownbd-cow-tls, nbdkit-cow64k-tls, …): the same
// server configuration as the plain target plus `--tls require` with an X.509 server
// certificate made for this run (certtool, or openssl when certtool is absent).
//
// The client is fio's nbd engine (libnbd) with `nbds://…?tls-verify-peer=false`: libnbd only
// reads certificate files named in a URI when the program allows local files, which fio does
// not, so the client does not check the server certificate (no client certificate either).
// Both servers are measured alike, and the costly part, the record cipher, is the same.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Rows measured over TLS (the others are shown as "-" for -tls targets). */
export const TLS_ROWS = ['randread-4k-qd32', 'seqread-1m-qd8'];
export const isTls = (target) => target.endsWith('-tls');
export const plainTarget = (target) => target.replace(/-tls$/, '');

const has = (tool) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;

/**
 * Make DIR/server-cert.pem and DIR/server-key.pem (self-signed, CN localhost, IP 127.0.0.1)
 * once; ca-cert.pem is the same certificate (nbdkit refuses a directory without it).
 */
export function makeServerCertificate(dir) {
  if (existsSync(join(dir, 'server-cert.pem'))) return dir;
  mkdirSync(dir, { recursive: true });
  const key = join(dir, 'server-key.pem');
  const cert = join(dir, 'server-cert.pem');
  if (has('certtool')) {
    const tmpl = join(dir, 'server.info');
    writeFileSync(tmpl, 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n');
    execFileSync('certtool', ['--generate-privkey', '--key-type=ecdsa', '--outfile', key], { stdio: 'ignore' });
    execFileSync('certtool', ['--generate-self-signed', '--load-privkey', key, '--template', tmpl, '--outfile', cert], { stdio: 'ignore' });
  } else {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  }
  copyFileSync(cert, join(dir, 'ca-cert.pem'));
  return dir;
}

/** The server arguments that turn TLS on, per server kind. */
export function tlsServerArgs(kind, certDir) {
  return kind === 'nbdkit' ? ['--tls=require', `--tls-certificates=${certDir}`] : ['--tls', 'require', '--tls-certificates', certDir];
}

export const tlsUri = (port, name) => `nbds://127.0.0.1:${port}/${name}?tls-verify-peer=false`;
