/**
 * `cownbd serve` at run time: turn the export definitions into a list, start the server
 * (api/create-server.ts, or demo's NbdServer), print one "cownbd: listening on <uri>"
 * line per listener on stdout, and stop gracefully on SIGINT/SIGTERM (a second signal
 * exits at once, status 1). The process-wide parts (signals, stdout, V8's --expose-gc)
 * live here, never in the library. Loaded only when `serve` or `demo` runs; the option
 * parsers are in serve-options.ts.
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
import { formatUri, listenOn } from '../api/endpoints.js';
import type { Logger } from '../logging.js';
import { NbdServer, type ListenAddress, type ListenEndpoint } from '../server/listener.js';
import type { ExportProvider, StaticExportConfig } from '../server/exports.js';
import { exposeGc } from '../server/idle-gc.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import type { IoPolicy } from '../block/io-policy.js';
import type { FileIo } from '../block/file-io.js';
import { checkDirectoryPath, checkImagePath, checkSocketPath } from './image-path.js';
import { DEFAULT_EPHEMERAL_DIR, MAX_EXPORT_NAME, UsageError, type ServeOptions } from './serve-options.js';

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
      rawOption: '-f raw',
    });
  }
  for (const e of o.export) list.push(o.readOnly ? { ...e, readOnly: true } : e);
  if (list.length === 0 && !allowNone) {
    if (o.overlayStore) throw new UsageError(`--overlay-store ${o.overlayStore} needs --overlay-dir (where the machines' local working copies live)`);
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

export interface RunningServer {
  server: NbdServer;
  uris: string[];
  addresses: ListenAddress[];
  /** Graceful stop, then process exit with `status` (what SIGTERM does). */
  shutdown(reason: string, status: number): void;
  onStop(fn: () => void): void;
}

/** The server as runServer() needs it: a createServer() server, or demo's NbdServer (nbdServerOf). */
export interface Servable {
  readonly nbd: NbdServer;
  readonly defaultExport: string;
  readonly exportNames: readonly string[];
  readonly tlsRequired: boolean;
  /** Listen on every endpoint (and start what runs once listening). */
  listen(): Promise<readonly ListenAddress[]>;
  /** Graceful stop, every device flushed and closed. */
  close(): Promise<void>;
}

/**
 * Listen, print the listening line(s) (not under --run unless --print-uri) and install signal handlers (before listening:
 * whoever reads the listening line may signal us immediately). `ready` runs once
 * listening, before the lines are printed. Shared by `serve` and `demo`.
 */
export async function runServer(s: Servable, o: { printUri?: boolean; run?: string }, log: Logger, ready?: () => void): Promise<RunningServer> {
  const { shutdown, onStop } = installSignalHandlers(() => s.close(), log);
  let addresses: ListenAddress[];
  try {
    addresses = [...(await s.listen())];
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  ready?.();
  const uris: string[] = [];
  for (const addr of addresses) {
    const uri = formatUri(addr, s.defaultExport, undefined, s.tlsRequired);
    const others = s.exportNames.filter((n) => n !== s.defaultExport).map((n) => formatUri(addr, n, undefined, s.tlsRequired));
    uris.push(uri);
    // Captive mode (--run) prints nothing of its own unless --print-uri asks: stdout belongs to
    // CMD, as with nbdkit (`size=$(cownbd serve --run 'nbdinfo --size "$uri"' disk.raw)`).
    if (o.run !== undefined && !o.printUri) continue;
    if (o.printUri) process.stdout.write([uri, ...others].map((u) => `${u}\n`).join(''));
    else process.stdout.write([`cownbd: listening on ${uri}`, ...others.map((u) => `cownbd: export at ${u}`)].map((l) => `${l}\n`).join(''));
  }
  return { server: s.nbd, uris, addresses, shutdown, onStop };
}

/** The listen endpoints from the command line: systemd's fds, a config file's list, or -U / -b -p. */
export function listenEndpoints(o: { port: number; bind: string; socket?: string; listen?: readonly ListenEndpoint[] }, listenFds: readonly number[]): ListenEndpoint[] {
  if (listenFds.length) return listenFds.map((fd) => ({ fd }));
  if (o.listen?.length) return [...o.listen];
  return [o.socket ? { path: o.socket } : { host: o.bind, port: o.port }];
}

/** An NbdServer for `provider` (demo), with the CLI's full GC for idle memory (idle-gc.ts). */
export function nbdServerOf(provider: ExportProvider, endpoints: readonly ListenEndpoint[], io: FileIo, defaultExport: string, log: Logger): Servable {
  const nbd = new NbdServer({ provider, log, io, gc: exposeGc() });
  return {
    nbd,
    defaultExport,
    exportNames: [],
    tlsRequired: false,
    listen: async () => {
      const out: ListenAddress[] = [];
      for (const endpoint of endpoints) out.push(await listenOn(nbd, endpoint, { log, defaultExport, tlsRequired: false }));
      return out;
    },
    close: () => nbd.stop(),
  };
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
  // The default ephemeral directory is ours to create; a named one must exist (or --create-dirs).
  const create = Boolean(o.createDirs);
  if (o.ephemeral && o.ephemeralDir) await checkDirectoryPath(o.ephemeralDir, '--ephemeral-dir', create || o.ephemeralDir === DEFAULT_EPHEMERAL_DIR);
  if (o.overlayDir) await checkDirectoryPath(o.overlayDir, '--overlay-dir', create);
  if (o.socket && !socketActivated) await checkSocketPath(o.socket);
}

/** Said once at start: without the addon, holes, TRIM and fast zeroing are off. */
export function logNativeAddon(log: Logger, policy: IoPolicy): void {
  if (policy.native) return;
  log.warn({ reason: policy.nativeUnavailableReason }, 'native addon not loaded: sparse-file support (holes, TRIM, fast zero) is off');
}

/**
 * SIGINT/SIGTERM (and shutdown() for --run/--exit-with-parent): graceful stop, then exit.
 * A second request while stopping exits at once with status 1.
 */
export function installSignalHandlers(stop: () => Promise<void>, log: Logger): Pick<RunningServer, 'shutdown' | 'onStop'> {
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
    stop().then(
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
