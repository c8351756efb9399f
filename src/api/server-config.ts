/**
 * ServerConfig: what createServer() serves, in the shape the TOML configuration file
 * (control/config-schema.ts, FileOptions) and the `serve` command line produce, minus the
 * settings that belong to a process rather than a server (log level, pidfile,
 * --exit-with-parent: the CLI applies those). Everything is optional; the defaults are
 * the CLI's. checkServerConfig() refuses combinations that cannot work, with a message
 * naming the setting, before anything is opened.
 */
import type { FileOptions } from '../control/config.js';
import { parseShipPolicy } from '../fleet/machine-device.js';
import { isObjectStoreUri, parseObjectStoreUri } from '../objectstore/uri.js';
import type { StaticExportConfig } from '../server/exports.js';
import type { ListenEndpoint } from '../server/listener.js';
import { SECURITY_DEFAULTS, type SecurityOptions } from '../server/security.js';

/** Settings of the process, not of a server (see above). */
type ProcessSettings = 'logLevel' | 'pidfile' | 'exitWithParent';

export interface ServerConfig extends Omit<FileOptions, ProcessSettings | 'export' | 'listen'> {
  /** Where to listen (default 127.0.0.1:10809); `{ port: 0 }` picks a free port. */
  listen?: readonly ListenEndpoint[];
  /** The named exports, opened by createServer() (a missing file fails it). */
  export?: readonly StaticExportConfig[];
  /** The TOML file a reload reads (docs/configuration.md); without it reload() fails. */
  config?: string;
}

export const DEFAULT_ENDPOINT: ListenEndpoint = { host: '127.0.0.1', port: 10809 };
/** The export name --overlay-dir answers when there are no static exports (docs/serving.md's examples). */
const OVERLAY_DIR_DEFAULT_EXPORT = 'vm1';

/** Refuse a config that cannot work; the message names the setting (as the CLI spells it). */
export function checkServerConfig(c: ServerConfig): void {
  if (c.admin && !('path' in c.admin) && !c.adminTokenFile) throw new Error('--admin HOST:PORT needs --admin-token-file (the bearer token clients must send)');
  if (c.overlayDir && !c.base) throw new Error('--overlay-dir needs --base (the golden image every overlay is made over)');
  if (c.ephemeral && !c.base) throw new Error('--ephemeral needs a base image: cownbd serve --ephemeral golden.img');
  if (c.ephemeral && c.readOnly) throw new Error('--ephemeral overlays are writable by design; drop --read-only');
  if (c.overlayStore !== undefined) checkFleetConfig(c);
  if (!c.export?.length && !c.overlayDir && !c.ephemeral && !c.config) throw new Error('nothing to serve: give an IMAGE or at least one --export NAME=PATH');
}

/** --overlay-store (docs/fleet.md): machines need their local working copies and an s3:// base. */
function checkFleetConfig(c: ServerConfig): void {
  const store = c.overlayStore!;
  if (!c.overlayDir) throw new Error(`--overlay-store ${store} needs --overlay-dir (where the machines' local working copies live)`);
  if (!c.base || !isObjectStoreUri(c.base)) throw new Error(`--overlay-store ${store} needs an s3:// --base (machines ship into the chunk store of their base); got --base ${c.base ?? '(none)'}`);
  let u;
  try {
    u = parseObjectStoreUri(store);
  } catch (err) {
    throw new Error(`--overlay-store: ${(err as Error).message}`);
  }
  if (u.version !== undefined) throw new Error(`--overlay-store ${store}: name a place (s3://BUCKET/PREFIX), not a version`);
  parseShipPolicy(c.ship ?? 'on-flush');
  if (c.leaseTtl !== undefined && !(c.leaseTtl >= 1 && c.leaseTtl <= 3600)) throw new Error(`--lease-ttl ${c.leaseTtl}: must be 1 to 3600 seconds`);
}

/**
 * The export a bare URI names: the first static export, else the ephemeral one, else the
 * overlay-dir machine `name` (-n) — "vm1" when none is given ("" names no machine there).
 */
export function defaultExportName(c: ServerConfig): string {
  return c.export?.[0]?.name ?? (c.ephemeral ? (c.name ?? '') : c.name || OVERLAY_DIR_DEFAULT_EXPORT);
}

/** The TLS, access and limit settings, with the CLI's defaults for what is not given. */
export function securityOptionsOf(c: ServerConfig): SecurityOptions {
  return {
    tls: c.tls ?? SECURITY_DEFAULTS.tls,
    tlsCertificates: c.tlsCertificates,
    tlsVerifyPeer: c.tlsVerifyPeer,
    tlsPsk: c.tlsPsk,
    allowFrom: c.allowFrom ?? SECURITY_DEFAULTS.allowFrom,
    handshakeTimeout: c.handshakeTimeout ?? SECURITY_DEFAULTS.handshakeTimeout,
    maxConnections: c.maxConnections ?? SECURITY_DEFAULTS.maxConnections,
    maxConnectionsPerClient: c.maxConnectionsPerClient ?? SECURITY_DEFAULTS.maxConnectionsPerClient,
    overlayDirMatchIdentity: c.overlayDirMatchIdentity,
    maxOverlays: c.maxOverlays ?? SECURITY_DEFAULTS.maxOverlays,
    minFree: c.minFree ?? SECURITY_DEFAULTS.minFree,
  };
}
