/**
 * SecurityOptions: every TLS, access and limit setting of a server as one plain typed
 * object. `serve` builds it from the command line (a config file loader can build the
 * same object); buildServerSecurity() checks it and loads what it names (credentials,
 * CIDRs) so a mistake stops start-up with a message naming the option.
 *
 *   SecurityOptions ─► buildServerSecurity() ─► ServerSecurity (used by NbdServer/Connection)
 */
import type { Logger } from '../logging.js';
import type { AccessRules, StaticExportLookup } from './access-control.js';
import { Admission, parseAllowFrom } from './limits.js';
import { OVERLAY_LIMIT_DEFAULTS, type OverlayLimits } from './overlay-quota.js';
import { loadTlsCredentials, type TlsCredentials, type TlsMode } from './tls.js';

export interface SecurityOptions {
  readonly tls: TlsMode;
  readonly tlsCertificates?: string;
  readonly tlsVerifyPeer?: boolean;
  readonly tlsPsk?: string;
  /** CIDRs (or single addresses) allowed to connect over TCP; empty = everyone. */
  readonly allowFrom: readonly string[];
  /** Seconds a haggling client may go without completing an option (0 = no limit; handshake-timer.ts). */
  readonly handshakeTimeout: number;
  readonly maxConnections: number;
  readonly maxConnectionsPerClient: number;
  /** Overlay-dir exports are visible only to the identity of the same name. */
  readonly overlayDirMatchIdentity?: boolean;
  /** --overlay-dir / --ephemeral: most overlay files, and the free-space reserve (bytes). */
  readonly maxOverlays: number;
  readonly minFree: number;
}

export const SECURITY_DEFAULTS = {
  tls: 'off',
  allowFrom: [],
  handshakeTimeout: 10,
  maxConnections: 1000,
  maxConnectionsPerClient: 64,
  maxOverlays: OVERLAY_LIMIT_DEFAULTS.maxOverlays,
  minFree: OVERLAY_LIMIT_DEFAULTS.minFreeBytes,
} as const satisfies SecurityOptions;

export interface ServerSecurity {
  readonly tlsMode: TlsMode;
  readonly tls?: TlsCredentials;
  readonly access: AccessRules;
  readonly admission: Admission;
  readonly handshakeTimeoutMs: number;
  readonly overlayLimits: OverlayLimits;
}

/**
 * `exports` are the static exports (their allow= lists are read at each lookup, so a
 * reloaded export set brings its own lists).
 */
export async function buildServerSecurity(o: SecurityOptions, exports: StaticExportLookup, log: Logger): Promise<ServerSecurity> {
  const tlsGiven = Boolean(o.tlsCertificates || o.tlsPsk);
  if (o.tls === 'off' && tlsGiven) throw new Error('--tls-certificates/--tls-psk need --tls on or --tls require');
  if (o.tls !== 'off' && !tlsGiven) throw new Error(`--tls ${o.tls} needs --tls-certificates DIR or --tls-psk FILE`);
  if (o.tlsVerifyPeer && !o.tlsCertificates) throw new Error('--tls-verify-peer needs --tls-certificates DIR');
  const identities = o.tls !== 'off' && (o.tlsPsk !== undefined || Boolean(o.tlsVerifyPeer));
  // Without authenticated identities these rules could never let anyone in.
  if (o.overlayDirMatchIdentity && !identities) {
    throw new Error('--overlay-dir-match-identity needs client identities: --tls require with --tls-psk, or --tls-certificates and --tls-verify-peer');
  }
  if (exports.names().some((n) => exports.config(n)?.allow?.length) && !identities) {
    throw new Error('allow= needs client identities: --tls with --tls-psk, or --tls-certificates and --tls-verify-peer');
  }
  for (const [k, v] of [['--max-connections', o.maxConnections], ['--max-connections-per-client', o.maxConnectionsPerClient], ['--max-overlays', o.maxOverlays]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer (got ${v})`);
  }
  if (!Number.isSafeInteger(o.minFree) || o.minFree < 0) throw new Error(`--min-free must be a size in bytes >= 0 (got ${o.minFree})`);
  if (!(o.handshakeTimeout >= 0)) throw new Error(`--handshake-timeout must be >= 0 seconds (got ${o.handshakeTimeout})`);
  const tls = o.tls === 'off' ? undefined : await loadTlsCredentials({ certificatesDir: o.tlsCertificates, pskFile: o.tlsPsk, verifyPeer: o.tlsVerifyPeer });
  return {
    tlsMode: o.tls,
    tls,
    access: { exports, matchIdentity: Boolean(o.overlayDirMatchIdentity) },
    admission: new Admission(
      { maxConnections: o.maxConnections, maxConnectionsPerClient: o.maxConnectionsPerClient, allowFrom: parseAllowFrom(o.allowFrom) },
      log,
    ),
    handshakeTimeoutMs: o.handshakeTimeout * 1000,
    overlayLimits: { maxOverlays: o.maxOverlays, minFreeBytes: o.minFree },
  };
}
