/**
 * Failed TLS handshakes in words. OpenSSL's own text ("…:error:0A0000FD:SSL routines:
 * tls_psk_do_binder:binder does not verify:../deps/openssl/…/extensions.c:1626:") tells an
 * operator nothing and leaks a build path; a client that rejects *our* certificate just
 * resets the connection ("read ECONNRESET"). This maps what Node reports (the OpenSSL reason
 * code it exposes as `err.code = 'ERR_SSL_<REASON>'`) to one sentence saying what happened
 * and what to check. Unknown reasons keep OpenSSL's short reason string, never the path.
 */
import type { TlsCredentials } from './tls.js';

/** OpenSSL reason (Node's ERR_SSL_… code without the prefix) → what it means here. */
const REASONS: Record<string, (c: Context) => string> = {
  PEER_DID_NOT_RETURN_A_CERTIFICATE: () => 'the client sent no certificate (--tls-verify-peer requires one signed by ca-cert.pem)',
  TLSV13_ALERT_CERTIFICATE_REQUIRED: () => 'the client sent no certificate (--tls-verify-peer requires one signed by ca-cert.pem)',
  CERTIFICATE_VERIFY_FAILED: () => "the client's certificate is not signed by ca-cert.pem (or has expired)",
  BINDER_DOES_NOT_VERIFY: (c) => `wrong PSK key${c.offered === undefined ? '' : ` for identity "${c.offered}"`} (the client's key differs from the one in --tls-psk)`,
  DECRYPTION_FAILED_OR_BAD_RECORD_MAC: (c) => (c.kind === 'psk' ? `wrong PSK key${c.offered === undefined ? '' : ` for identity "${c.offered}"`}` : 'the first encrypted record did not decrypt'),
  BAD_RECORD_MAC: (c) => (c.kind === 'psk' ? `wrong PSK key${c.offered === undefined ? '' : ` for identity "${c.offered}"`}` : 'the first encrypted record did not decrypt'),
  NO_SHARED_CIPHER: (c) =>
    c.kind === 'psk'
      ? 'no cipher in common: this server uses TLS-PSK (--tls-psk), the client offered none (an X.509 client?)'
      : 'no cipher in common: this server uses X.509 certificates, the client offered none it accepts (a PSK-only client?)',
  NO_SUITABLE_SIGNATURE_ALGORITHM: (c) => (c.kind === 'psk' ? 'the client offered no PSK identity this server knows' : 'no signature algorithm in common'),
  WRONG_VERSION_NUMBER: () => 'the client does not speak TLS (plain bytes after STARTTLS)',
  HTTP_REQUEST: () => 'the client sent an HTTP request, not a TLS handshake',
  UNSUPPORTED_PROTOCOL: () => 'the client offered only TLS versions older than 1.2',
  TLSV1_ALERT_PROTOCOL_VERSION: () => 'no TLS version in common (this server needs TLS 1.2 or newer)',
  SSLV3_ALERT_BAD_CERTIFICATE: () => "the client rejected the server's certificate (bad certificate)",
  TLSV1_ALERT_UNKNOWN_CA: () => "the client does not trust the CA that signed the server's certificate",
  SSLV3_ALERT_CERTIFICATE_UNKNOWN: () => "the client rejected the server's certificate (does it name the host the client dials?)",
  TLSV1_ALERT_DECRYPT_ERROR: (c) => (c.kind === 'psk' ? 'the client rejected the handshake (wrong PSK key?)' : 'the client rejected the handshake (decrypt error)'),
};

interface Context {
  readonly kind: TlsCredentials['kind'];
  /** The PSK identity the client offered, when it got that far. */
  readonly offered: string | undefined;
}

/**
 * One sentence for a failed server-side handshake. `err` is what tls.Server's
 * 'tlsClientError' or the socket's close reported.
 */
export function explainTlsFailure(err: unknown, kind: TlsCredentials['kind'], offered: string | undefined): string {
  const c: Context = { kind, offered: offered?.slice(0, 200) };
  const e = err as NodeJS.ErrnoException & { reason?: string };
  const reason = typeof e?.code === 'string' && e.code.startsWith('ERR_SSL_') ? e.code.slice('ERR_SSL_'.length) : undefined;
  if (reason && REASONS[reason]) return REASONS[reason](c);
  if (e?.code === 'ECONNRESET' || e?.code === 'EPIPE' || e?.code === 'ECONNABORTED') {
    return kind === 'psk'
      ? 'the client closed the connection during the TLS handshake (it may have rejected the PSK handshake: check its username and key)'
      : "the client closed the connection during the TLS handshake: it most likely rejected the server's certificate (the certificate must name the host or address the client dials, and the client must trust the CA that signed it)";
  }
  if (typeof e?.reason === 'string' && e.reason) return `TLS error: ${e.reason}`;
  // Node's message for OpenSSL errors embeds a source path: keep only the reason text.
  const message = e instanceof Error ? e.message : String(err);
  const openssl = /:error:[0-9A-F]+:[^:]*:[^:]*:([^:]+):/.exec(message);
  return openssl ? `TLS error: ${openssl[1]}` : message;
}
