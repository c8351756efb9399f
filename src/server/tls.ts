/**
 * TLS for NBD's STARTTLS (docs/security.md): credentials are loaded once at start-up, and
 * a socket that has just been answered NBD_REP_ACK to NBD_OPT_STARTTLS is upgraded in
 * place with Node's `tls.TLSSocket` (OpenSSL does the crypto; nothing is hand-written).
 *
 *   loadTlsCredentials(config) ─► TlsCredentials (secure context + how to name the peer)
 *   upgradeToTls(socket, creds) ─► { socket: TLSSocket, identity } once the handshake is done
 *
 * Two kinds of credentials, in the file layouts nbdkit, libnbd and QEMU share:
 *   x509  DIR/server-cert.pem, DIR/server-key.pem, DIR/ca-cert.pem; with verifyPeer a client
 *         certificate signed by ca-cert.pem is required and its subject CN is the identity.
 *   psk   a psktool file, one `username:hexkey` per line; the username is the identity.
 *
 * TLS 1.2 is the floor. PSK works with TLS 1.3 too: OpenSSL calls the same server callback
 * for TLS 1.3 external PSKs (SHA-256 suites), which is what gnutls clients offer.
 *
 * Renegotiation (TLS 1.2 only; 1.3 has none) is refused: every client-initiated handshake
 * costs the server far more CPU than the client, and NBD clients never renegotiate. Node's
 * own guard (tls.CLIENT_RENEG_LIMIT, process-wide) only emits an 'error' that nothing
 * acts on, so a TLS 1.2 socket is set to disableRenegotiation() and the first attempt
 * destroys it (isRenegotiationAttempt lets the connection log it at warn; docs/security.md).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type net from 'node:net';
import tls from 'node:tls';
import { explainTlsFailure } from './tls-failure.js';

export const TLS_MODES = ['off', 'on', 'require'] as const;
export type TlsMode = (typeof TLS_MODES)[number];

export interface TlsConfig {
  /** Directory with server-cert.pem, server-key.pem (and ca-cert.pem for verifyPeer). */
  readonly certificatesDir?: string;
  /** Require and verify a client certificate (x509 only). */
  readonly verifyPeer?: boolean;
  /** psktool key file (`username:hexkey` lines). */
  readonly pskFile?: string;
}

export interface TlsCredentials {
  readonly kind: 'x509' | 'psk';
  readonly verifyPeer: boolean;
  /** tls.createServer() options (context material, verification, PSK ciphers). */
  readonly serverOptions: tls.TlsOptions;
  /** PSK keys by username (psk only). */
  readonly pskKeys?: ReadonlyMap<string, Buffer>;
}

/** TLS 1.2 PSK suites (forward secret first); TLS 1.3 uses OpenSSL's default suites. */
const PSK_CIPHERS = [
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
  'PSK-CHACHA20-POLY1305',
].join(':');

/** A psktool file: `username:hexkey` per line; blank lines and `#` comments ignored. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const where = `${file} line ${i + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) throw new Error(`${where}: expected username:hexkey`);
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new Error(`${where}: the key of "${user}" is not an even number of hex digits`);
    if (hex.length < 32) throw new Error(`${where}: the key of "${user}" is shorter than 128 bits`);
    if (keys.has(user)) throw new Error(`${where}: username "${user}" appears twice`);
    keys.set(user, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new Error(`${file}: no username:hexkey lines`);
  return keys;
}

async function readNamed(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** Load and check the credentials now, so a bad file stops start-up with its name. */
export async function loadTlsCredentials(config: TlsConfig): Promise<TlsCredentials> {
  if (config.certificatesDir && config.pskFile) throw new Error('give either --tls-certificates or --tls-psk, not both');
  if (config.pskFile) {
    if (config.verifyPeer) throw new Error('--tls-verify-peer applies to --tls-certificates (PSK always authenticates the client)');
    const pskKeys = parsePskFile((await readNamed(config.pskFile)).toString('utf8'), config.pskFile);
    const serverOptions: tls.TlsOptions = { minVersion: 'TLSv1.2', ciphers: PSK_CIPHERS };
    return { kind: 'psk', verifyPeer: true, serverOptions, pskKeys };
  }
  if (!config.certificatesDir) throw new Error('TLS needs --tls-certificates DIR or --tls-psk FILE');
  const dir = config.certificatesDir;
  const cert = await readNamed(path.join(dir, 'server-cert.pem'));
  const key = await readNamed(path.join(dir, 'server-key.pem'));
  const ca = config.verifyPeer ? await readNamed(path.join(dir, 'ca-cert.pem')) : undefined;
  const verifyPeer = Boolean(config.verifyPeer);
  const serverOptions: tls.TlsOptions = {
    minVersion: 'TLSv1.2',
    cert,
    key,
    ...(ca ? { ca } : {}),
    requestCert: verifyPeer,
    rejectUnauthorized: verifyPeer,
  };
  try {
    tls.createSecureContext(serverOptions); // bad PEM or a key that does not match: fail now
  } catch (err) {
    throw new Error(`${dir}: server-cert.pem / server-key.pem${ca ? ' / ca-cert.pem' : ''}: ${(err as Error).message}`);
  }
  return { kind: 'x509', verifyPeer, serverOptions };
}

export interface TlsSession {
  readonly socket: tls.TLSSocket;
  /** Certificate CN or PSK username; undefined for an x509 client without verifyPeer. */
  readonly identity: string | undefined;
  readonly protocol: string | undefined;
  readonly cipher: string;
}

/**
 * Run the server side of a TLS handshake on `socket` (no bytes may be buffered from it:
 * the caller has paused it before sending the ACK). Rejects if the handshake fails or the
 * client is not authenticated as required; the caller then destroys the socket.
 *
 * The socket is handed to a never-listening tls.Server (`emit('connection')`, the
 * documented way to inject a socket): that path verifies client certificates and rejects
 * unauthorised ones, which a bare tls.TLSSocket leaves to the caller. One server per
 * connection (about 0.5 ms) keeps the 'secureConnection' event unambiguous.
 */
export function upgradeToTls(socket: net.Socket, creds: TlsCredentials): Promise<TlsSession> {
  let pskIdentity: string | undefined;
  let offered: string | undefined;
  const server = tls.createServer({
    ...creds.serverOptions,
    ...(creds.pskKeys
      ? {
          pskCallback: (_s: tls.TLSSocket, identity: string): Buffer | null => {
            offered = identity;
            const key = creds.pskKeys!.get(identity);
            if (key) pskIdentity = identity;
            return key ?? null;
          },
        }
      : {}),
  });
  return new Promise((resolve, reject) => {
    const closed = (): void => reject(new Error(explainTlsFailure(Object.assign(new Error('closed'), { code: 'ECONNRESET' }), creds.kind, offered)));
    socket.once('close', closed);
    server.once('tlsClientError', (err: Error) => {
      socket.off('close', closed);
      // OpenSSL's message for an unknown PSK user is about signature algorithms: say what happened.
      if (creds.kind === 'psk' && pskIdentity === undefined && offered !== undefined) {
        reject(new Error(`unknown PSK identity "${offered.slice(0, 200)}"`));
      } else reject(new Error(explainTlsFailure(err, creds.kind, offered)));
    });
    server.once('secureConnection', (secure: tls.TLSSocket) => {
      socket.off('close', closed);
      refuseRenegotiation(secure);
      let identity: string | undefined;
      if (creds.kind === 'psk') {
        identity = pskIdentity;
        if (identity === undefined) return reject(new Error('TLS-PSK client has no known identity'));
      } else if (creds.verifyPeer) {
        if (!secure.authorized) return reject(new Error(`client certificate rejected: ${String(secure.authorizationError)}`));
        identity = certificateCn(secure.getPeerCertificate());
        if (!identity) return reject(new Error('client certificate has no subject CN'));
      }
      resolve({ socket: secure, identity, protocol: secure.getProtocol() ?? undefined, cipher: secure.getCipher().name });
    });
    server.emit('connection', socket);
  });
}

/** True for the error Node emits on a TLS socket when its peer starts a renegotiation. */
export function isRenegotiationAttempt(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === 'ERR_TLS_RENEGOTIATION_DISABLED' || code === 'ERR_TLS_SESSION_ATTACK';
}

/**
 * The first renegotiation attempt closes the connection. Node reports it from OpenSSL's
 * handshake-start callback, i.e. on the client's new ClientHello, before any of the new
 * handshake's work; destroying the socket there ends it.
 */
function refuseRenegotiation(secure: tls.TLSSocket): void {
  // TLS 1.3 has no renegotiation; its post-handshake messages (KeyUpdate) are legitimate.
  if (secure.getProtocol() === 'TLSv1.3') return;
  secure.disableRenegotiation();
  secure.on('error', (err) => {
    if (isRenegotiationAttempt(err)) secure.destroy();
  });
}

function certificateCn(cert: tls.PeerCertificate): string | undefined {
  const cn = cert?.subject?.CN as string | string[] | undefined;
  return Array.isArray(cn) ? cn[0] : cn;
}
