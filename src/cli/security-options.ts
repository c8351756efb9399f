/**
 * The `serve` options for TLS, access control and limits (docs/tls.md), kept apart
 * from serve-register.ts: they are registered on the command here; createServer() turns
 * them (like a config file's [tls] and [limits]) into the plain SecurityOptions object
 * (src/server/security.ts) with api/server-config.ts's securityOptionsOf().
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import { SECURITY_DEFAULTS } from '../server/security.js';
import { TLS_MODES, type TlsMode } from '../server/tls.js';
import { formatSize, parseSize } from '../util/size.js';
import { DEFAULT_MAX_SNAPSHOTS, MAX_SNAPSHOTS_LIMIT } from '../control/snapshot-limit.js';

/** What commander collects for these options. */
export interface SecurityCliOptions {
  tls: TlsMode;
  tlsCertificates?: string;
  tlsVerifyPeer?: boolean;
  tlsPsk?: string;
  allowFrom: string[];
  handshakeTimeout: number;
  maxConnections: number;
  maxConnectionsPerClient: number;
  overlayDirMatchIdentity?: boolean;
  maxOverlays: number;
  minFree: number;
  maxSnapshots: number;
}

function positiveInt(what: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v) || Number(v) < 1) throw new InvalidArgumentError(`${what} must be a positive integer (got "${v}")`);
    return Number(v);
  };
}

function snapshotLimit(v: string): number {
  const n = positiveInt('--max-snapshots')(v);
  if (n > MAX_SNAPSHOTS_LIMIT) throw new InvalidArgumentError(`--max-snapshots must be at most ${MAX_SNAPSHOTS_LIMIT}: a chain has at most 64 layers (got "${v}")`);
  return n;
}

function sizeArg(v: string): number {
  try {
    return parseSize(v, '--min-free');
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function seconds(v: string): number {
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !Number.isFinite(n)) throw new InvalidArgumentError(`must be a number of seconds (got "${v}")`);
  return n;
}

export function addSecurityOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--tls <mode>', 'STARTTLS: off, on (offered) or require (nothing else before TLS)').choices(TLS_MODES as unknown as string[]).default(SECURITY_DEFAULTS.tls))
    .option('--tls-certificates <dir>', 'X.509: DIR/server-cert.pem, DIR/server-key.pem, DIR/ca-cert.pem (the nbdkit/QEMU layout)')
    .option('--tls-verify-peer', 'X.509: require a client certificate signed by ca-cert.pem; its CN is the client identity')
    .option('--tls-psk <file>', 'TLS-PSK: psktool key file (username:hexkey lines); the username is the client identity')
    .option('--allow-from <cidr>', 'accept TCP clients only from this address or CIDR (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--handshake-timeout <seconds>', 'drop a haggling client that completes no option for this long, or is still haggling after 30 times it (0 = never)', seconds, SECURITY_DEFAULTS.handshakeTimeout)
    .option('--max-connections <n>', 'refuse connections beyond this many', positiveInt('--max-connections'), SECURITY_DEFAULTS.maxConnections)
    .option('--max-connections-per-client <n>', 'refuse connections beyond this many from one address', positiveInt('--max-connections-per-client'), SECURITY_DEFAULTS.maxConnectionsPerClient)
    .option('--overlay-dir-match-identity', '--overlay-dir: a client may open only the export named like its TLS identity')
    .option('--max-overlays <n>', '--overlay-dir/--ephemeral: create no overlay beyond this many files', positiveInt('--max-overlays'), SECURITY_DEFAULTS.maxOverlays)
    .addOption(
      new Option('--min-free <size>', '--overlay-dir/--ephemeral: create no overlay when less than SIZE is free there (e.g. 1G, 0)')
        .argParser(sizeArg)
        // Shown as a size in --help, not as 1073741824.
        .default(SECURITY_DEFAULTS.minFree, formatSize(SECURITY_DEFAULTS.minFree).replace(' ', '')),
    )
    .option('--max-snapshots <n>', 'admin API: refuse a snapshot that would give an export more than this many snapshot layers', snapshotLimit, DEFAULT_MAX_SNAPSHOTS);
}
