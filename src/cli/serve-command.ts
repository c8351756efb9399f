/**
 * `cownbd serve` at run time: turn the export definitions into a list, start an NbdServer,
 * print one "cownbd: listening on <uri>" line per listener on stdout, and stop gracefully
 * on SIGINT/SIGTERM (a second signal exits at once, status 1). Loaded only when `serve` or
 * `demo` runs; the option parsers are in serve-options.ts.
 *
 * Static exports are opened at start-up, not at the first client: a missing backing
 * file or a cow "mtime mismatch" is an operator error that should stop `serve` with one
 * line naming the export and file, not surface later as a refused GO.
 *
 * systemd socket activation (sd_listen_fds(3)): when LISTEN_PID is our pid and
 * LISTEN_FDS >= 1, the inherited listening sockets fds 3.. are used instead of
 * -p/-b/-U, and the variables are removed so children do not inherit them.
 *
 *   cownbd serve disk.img                         export "" on 127.0.0.1:10809
 *   cownbd serve -U /run/nbd.sock -n vm1 vm1.cow  export "vm1" on a Unix socket
 *   cownbd serve --export a=a.cow --export b=b.raw,ro,description=Base disk
 */
import { readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import type { Logger } from '../logging.js';
import { NbdServer, type ListenAddress, type ListenEndpoint } from '../server/listener.js';
import type { ExportProvider, StaticExportConfig } from '../server/exports.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import type { IoPolicy } from '../block/io-policy.js';
import type { FileIo } from '../block/file-io.js';
import { checkDirectoryPath, checkImagePath, checkSocketPath } from './image-path.js';
import type { ServerSecurity } from '../server/security.js';
import { MAX_EXPORT_NAME, UsageError, type ServeOptions } from './serve-options.js';

/** First fd passed by systemd (SD_LISTEN_FDS_START). */
export const SD_LISTEN_FDS_START = 3;

/**
 * The listening fds systemd passed us (sd_listen_fds semantics), or [] when not socket
 * activated. LISTEN_PID guards against variables inherited from an activated parent.
 * The variables are removed from `env` either way (unset_environment = 1).
 */
export function takeSystemdListenFds(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number[] {
  const listenPid = env.LISTEN_PID;
  const listenFds = env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (listenPid === undefined || listenFds === undefined) return [];
  if (!/^\d+$/.test(listenPid) || Number(listenPid) !== pid) return [];
  if (!/^\d+$/.test(listenFds)) throw new UsageError(`LISTEN_FDS must be a count of inherited sockets (got "${listenFds}")`);
  const n = Number(listenFds);
  return Array.from({ length: n }, (_, i) => SD_LISTEN_FDS_START + i);
}

/** The exports named on the command line: the positional IMAGE plus every --export. */
export function exportConfigs(image: string | undefined, o: ServeOptions, allowNone = false): StaticExportConfig[] {
  const list: StaticExportConfig[] = [];
  if (image) {
    list.push({
      name: o.name,
      path: image,
      readOnly: o.readOnly,
      description: o.description,
      format: o.format,
      backingFormat: o.backingFormat,
    });
  }
  for (const e of o.export) list.push(o.readOnly ? { ...e, readOnly: true } : e);
  if (list.length === 0 && !allowNone) {
    if (o.base) throw new UsageError(`--base ${o.base} is a golden base, not an export: add --overlay-dir DIR (a cow overlay DIR/NAME.cow per export name) or --ephemeral (a fresh overlay per connection)`);
    throw new Error('nothing to serve: give an IMAGE or at least one --export NAME=PATH');
  }
  for (const e of list) {
    if (Buffer.byteLength(e.name) > MAX_EXPORT_NAME) throw new UsageError(`export name "${e.name.slice(0, 40)}…" is ${Buffer.byteLength(e.name)} bytes: the NBD limit is ${MAX_EXPORT_NAME}`);
  }
  const seen = new Set<string>();
  for (const e of list) {
    if (seen.has(e.name)) throw new Error(`export name "${e.name}" is used twice`);
    seen.add(e.name);
  }
  return list;
}

/** The export's URI; `nbds` (libnbd: TLS required) when the server requires TLS. */
export function formatUri(addr: ListenAddress, exportName: string, hostname = os.hostname(), tlsRequired = false): string {
  const name = encodeURIComponent(exportName);
  const scheme = tlsRequired ? 'nbds' : 'nbd';
  if (addr.path) return `${scheme}+unix:///${name}?socket=${addr.path}`;
  if (addr.fd !== undefined) return `${scheme}+unix:///${name}?socket=(inherited-fd-${addr.fd})`;
  // A wildcard address is not somewhere a client can connect to: print this host's name.
  const raw = addr.host === '0.0.0.0' || addr.host === '::' ? hostname : addr.host;
  const host = raw && raw.includes(':') ? `[${raw}]` : raw;
  return `${scheme}://${host}:${addr.port}/${name}`;
}

export interface RunningServer {
  server: NbdServer;
  uris: string[];
  addresses: ListenAddress[];
  /** Graceful stop, then process exit with `status` (what SIGTERM does). */
  shutdown(reason: string, status: number): void;
  onStop(fn: () => void): void;
}

export interface RunServerOptions {
  port: number;
  bind: string;
  socket?: string;
  listenFds?: readonly number[];
  /** --print-uri: bare URIs only (no "cownbd: listening on" prefix). */
  printUri?: boolean;
  /** Names of the static exports: each gets its own URI line (default export first). */
  exportNames?: readonly string[];
  /** The devices' FileIo: its policy (shared reads) and the server's quiet probe. */
  io?: FileIo;
  /** Endpoints from a config file (instead of port/bind/socket). */
  listen?: readonly ListenEndpoint[];
  /** TLS, access rules and limits (absent: open server, as `demo` runs). */
  security?: ServerSecurity;
}

/**
 * Start a server for `provider` on the endpoint from the options, print the listening
 * line(s) and install signal handlers. Shared by `serve` and `demo`.
 */
export async function runServer(provider: ExportProvider, o: RunServerOptions, defaultExport: string, log: Logger): Promise<RunningServer> {
  const server = new NbdServer({ provider, log, io: o.io, security: o.security });
  const tlsRequired = o.security?.tlsMode === 'require';
  const endpoints: ListenEndpoint[] = o.listenFds?.length
    ? o.listenFds.map((fd) => ({ fd }))
    : o.listen?.length
      ? [...o.listen]
      : [o.socket ? { path: o.socket } : { host: o.bind, port: o.port }];
  // Handlers first: whoever reads the listening line may signal us immediately.
  const { shutdown, onStop } = installSignalHandlers(server, log);
  const uris: string[] = [];
  const addresses: ListenAddress[] = [];
  for (const endpoint of endpoints) {
    let addr: ListenAddress;
    try {
      addr = await server.listen(endpoint);
      if (addr.fd !== undefined) addr = { ...addr, path: unixSocketPathOfFd(addr.fd) };
    } catch (err) {
      await provider.close().catch(() => {});
      throw new UsageError(`cannot listen on ${describeEndpoint(endpoint)}: ${(err as Error).message}`);
    }
    const uri = formatUri(addr, defaultExport, undefined, tlsRequired);
    log.info({ uri, ...('fd' in endpoint ? { fd: endpoint.fd } : {}) }, 'listening');
    if ((addr.host === '0.0.0.0' || addr.host === '::') && !tlsRequired) log.warn({ address: addr.host }, 'listening on every interface: NBD has no authentication here; firewall the port');
    const others = (o.exportNames ?? []).filter((n) => n !== defaultExport).map((n) => formatUri(addr, n, undefined, tlsRequired));
    if (o.printUri) process.stdout.write([uri, ...others].map((u) => `${u}\n`).join(''));
    else process.stdout.write([`cownbd: listening on ${uri}`, ...others.map((u) => `cownbd: export at ${u}`)].map((l) => `${l}\n`).join(''));
    uris.push(uri);
    addresses.push(addr);
  }
  return { server, uris, addresses, shutdown, onStop };
}

/**
 * The path a listening Unix socket fd is bound to, found through its inode in
 * /proc/net/unix (Node only knows paths it bound itself); undefined when not found
 * (abstract or unnamed socket, no /proc).
 */
export function unixSocketPathOfFd(fd: number): string | undefined {
  try {
    const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    if (!m) return undefined;
    for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
      // Num RefCount Protocol Flags Type St Inode Path
      const f = line.trim().split(/\s+/);
      if (f[6] === m[1] && f[7]?.startsWith('/')) return f.slice(7).join(' ');
    }
  } catch {
    // Not Linux, or /proc not mounted: the URI will say "inherited fd".
  }
  return undefined;
}

/** Run `fn`; a failure becomes a UsageError prefixed with `what` (the file it concerns). */
export async function namedFailure<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new UsageError(`${what}: ${(err as Error).message}`);
  }
}

/**
 * Fail at start-up, not at the first client, with one sentence naming the path and what
 * to do (image-path.ts): images missing, unreadable, not writable without -r, directories,
 * FIFOs; a Unix socket in a missing directory; an --ephemeral-dir that is a file.
 */
export async function checkServePaths(configs: readonly StaticExportConfig[], o: ServeOptions, ephemeralBase: string | undefined, socketActivated: boolean): Promise<void> {
  const named = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (err) {
      throw new UsageError(`${what}: ${(err as Error).message}`);
    }
  };
  // s3:// images are not paths: they are checked when opened (below).
  const local = (p: string) => !isObjectStoreUri(p);
  for (const c of configs) if (local(c.path)) await named(`export "${c.name}"`, () => checkImagePath(c.path, { write: !c.readOnly }));
  if (ephemeralBase && local(ephemeralBase)) await named('base image', () => checkImagePath(ephemeralBase));
  if (o.overlayDir && o.base && local(o.base)) await named('--base', () => checkImagePath(o.base!));
  // These messages name their option themselves (PathError: printed as one line like UsageError).
  if (o.ephemeral && o.ephemeralDir) await checkDirectoryPath(o.ephemeralDir, '--ephemeral-dir');
  if (o.overlayDir) await checkDirectoryPath(o.overlayDir, '--overlay-dir');
  if (o.socket && !socketActivated) await checkSocketPath(o.socket);
}

/** Said once at start: without the addon, holes, TRIM and fast zeroing are off. */
export function logNativeAddon(log: Logger, policy: IoPolicy): void {
  if (policy.native) return;
  log.warn({ reason: policy.nativeUnavailableReason }, 'native addon not loaded: sparse-file support (holes, TRIM, fast zero) is off');
}

function describeEndpoint(e: ListenEndpoint): string {
  if ('fd' in e) return `inherited socket fd ${e.fd} (systemd socket activation)`;
  if ('path' in e) return e.path;
  return `${e.host}:${e.port}`;
}

/**
 * SIGINT/SIGTERM (and shutdown() for --run/--exit-with-parent): graceful stop, then exit.
 * A second request while stopping exits at once with status 1.
 */
export function installSignalHandlers(server: NbdServer, log: Logger): Pick<RunningServer, 'shutdown' | 'onStop'> {
  let stopping = false;
  const stopHooks: Array<() => void> = [];
  const shutdown = (reason: string, status: number) => {
    if (stopping) {
      log.warn({ reason }, 'second stop request: exiting immediately');
      process.exit(1);
    }
    stopping = true;
    log.info({ reason }, 'shutting down');
    for (const fn of stopHooks) fn();
    server.stop().then(
      () => process.exit(status),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals) => shutdown(`signal ${signal}`, 0);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return { shutdown, onStop: (fn) => stopHooks.push(fn) };
}
