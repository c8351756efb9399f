/**
 * createServer(config): cownbd as a library. The same assembly `cownbd serve` runs (the
 * CLI calls this), from a typed ServerConfig (server-config.ts):
 *
 *   createServer  ─► static exports opened (ReloadableExports), security loaded,
 *                    overlay providers (--overlay-dir, --ephemeral) made, one NbdServer
 *   listen()      ─► every endpoint listening ─► control plane (reload, admin API)
 *   close()       ─► graceful stop: requests drain, every device flushed and closed
 *
 *   const server = await createServer({ export: [{ name: 'disk', path: 'disk.cow' }], listen: [{ host: '127.0.0.1', port: 0 }] });
 *   const [address] = await server.listen();
 *   console.log(server.uri('disk'));   // nbd://127.0.0.1:PORT/disk
 *   await server.close();
 *
 * Nothing here changes the process: no signal handlers, nothing written to stdout or
 * stderr (the logger is optional and silent by default), no V8 flags (a full GC after
 * idle sweeps only when the caller passes `gc`). The CLI adds those (cli/serve-action.ts).
 * Problems with the config are Errors whose message names the setting or file.
 */
import os from 'node:os';
import path from 'node:path';
import { FileIo } from '../block/file-io.js';
import { OpenGuard } from '../block/open-guard.js';
import type { FileOptions } from '../control/config.js';
import { startControlPlane, type ControlPlane } from '../control/control-plane.js';
import { ReloadableExports } from '../control/export-set.js';
import { GuardedProvider } from '../control/guarded-provider.js';
import type { ReloadResult } from '../control/reload.js';
import { snapshottable } from '../control/swappable-device.js';
import { openImage } from '../formats/open-image.js';
import { DEFAULT_OVERLAY_FORMAT, FALLBACK_FORMAT, ForeignImageError, namedBackingFormat } from '../formats/registry.js';
import { silentLogger, type Logger } from '../logging.js';
import { lazyObjectStore, storeConfigFrom, type LazyObjectStore } from '../objectstore/cli-options.js';
import { isObjectStoreUri, parseObjectStoreUri } from '../objectstore/uri.js';
import { CompositeExportProvider, type ExportProvider, type StaticExportConfig } from '../server/exports.js';
import { NbdServer, type ListenAddress } from '../server/listener.js';
import { EphemeralProvider, OverlayDirProvider, type BaseImage } from '../server/overlay-providers.js';
import type { FleetProvider } from '../server/fleet-provider.js';
import { buildServerSecurity, type ServerSecurity } from '../server/security.js';
import { formatUri, listenOn } from './endpoints.js';
import { checkServerConfig, DEFAULT_ENDPOINT, defaultExportName, securityOptionsOf, type ServerConfig } from './server-config.js';

export interface CreateServerOptions {
  /** Where the server logs (default: nowhere). */
  readonly log?: Logger;
  /** File I/O switches (block/io-policy.ts); default: every fast path. */
  readonly io?: FileIo;
  /** A full GC for idle memory reclaim (server/idle-gc.ts: the CLI passes exposeGc()). */
  readonly gc?: () => void;
  /** What a reload keeps besides the file's exports (the CLI: exports named on its command line). */
  readonly reload?: {
    /** The file as read at start (to tell which restart-only settings changed). */
    readonly initial?: FileOptions;
    readonly keepExports?: readonly StaticExportConfig[];
    /** Every export read-only whatever the file says (`serve -r`). */
    readonly keepReadOnly?: boolean;
  };
}

/** A server made by createServer(). */
export interface CownbdServer {
  /** The NBD server (connections, request listeners, graceful stop). */
  readonly nbd: NbdServer;
  /** The export a URI without a name reaches. */
  readonly defaultExport: string;
  /** The static exports' names (default first). */
  readonly exportNames: readonly string[];
  /** True when clients must use TLS (URIs are then `nbds`). */
  readonly tlsRequired: boolean;
  /** Listening addresses (after listen()). */
  readonly addresses: readonly ListenAddress[];
  /** Reload and the admin API (after listen()). */
  readonly controlPlane: ControlPlane | undefined;
  /** Listen on every configured endpoint, then start the control plane; resolves with the real addresses. */
  listen(): Promise<readonly ListenAddress[]>;
  /** The URI of export `name` (default: defaultExport) at `address` (default: the first). */
  uri(name?: string, address?: ListenAddress): string;
  /** Re-read `config.config` and apply its export list (all or nothing). */
  reload(trigger?: string): Promise<ReloadResult>;
  /** Graceful stop: running requests finish, devices are flushed and closed. Idempotent. */
  close(): Promise<void>;
}

/** What building the server shares between its steps. */
interface Assembly {
  readonly config: ServerConfig;
  readonly log: Logger;
  readonly io: FileIo;
  /** The server's FileIo: the same policy plus the open-file guard (block/open-guard.ts). */
  readonly sio: FileIo;
  readonly objectStore: LazyObjectStore;
}

/** Open the exports and providers of `config`; nothing listens until listen(). */
export async function createServer(config: ServerConfig, options: CreateServerOptions = {}): Promise<CownbdServer> {
  checkServerConfig(config);
  storeConfigFrom(config); // bad object-store settings fail now, not at the first s3:// image
  const log = options.log ?? silentLogger();
  const given = options.io ?? new FileIo();
  // Every overlay this server opens (exports, machines, snapshot tops) persists its bitmap
  // on this interval (IoPolicy.bitmapSyncMs, formats/bitmap-persistence.ts).
  const io = config.bitmapSyncInterval === undefined ? given : new FileIo({ ...given.policy, bitmapSyncMs: Math.round(config.bitmapSyncInterval * 1000) });
  const a: Assembly = { config, log, io, sio: new FileIo(io.policy, new OpenGuard(config.allowPath)), objectStore: lazyObjectStore(config, log, io, true) };
  const golden = config.ephemeral || config.overlayDir ? config.base : undefined;
  // Every export's files go through one registry (a file read-only in one layer is never
  // opened writable by another export) and --allow-path; see block/open-guard.ts.
  if (golden && !isObjectStoreUri(golden)) await a.sio.guard!.pinReadOnly(path.resolve(golden));
  const exports = await openStaticExports(a);
  let security: ServerSecurity;
  let overlays: Awaited<ReturnType<typeof overlayProviders>>;
  try {
    security = await buildServerSecurity(securityOptionsOf(config), exports, log);
    overlays = await overlayProviders(a, security);
  } catch (err) {
    await exports.close().catch(() => {});
    throw err;
  }
  // The control plane holds new clients off an export while it resets or snapshots it.
  const all: ExportProvider[] = [exports, ...overlays.providers];
  const guard = new GuardedProvider(all.length === 1 ? all[0]! : new CompositeExportProvider(all));
  const nbd = new NbdServer({ provider: guard, log, io, security, gc: options.gc });
  return new Server(a, nbd, { exports, guard, overlays: overlays.overlays, fleet: overlays.fleet, baseFormat: overlays.baseFormat, security, reload: options.reload });
}

async function openStaticExports(a: Assembly): Promise<ReloadableExports> {
  const { config: c } = a;
  const openStatic = (e: StaticExportConfig) =>
    openImage(e.path, { readOnly: e.readOnly, format: e.format, backingFormat: e.backingFormat, ignoreMtime: c.ignoreMtime, io: a.sio, pathMap: c.backingPathMap, objectStore: a.objectStore }).catch(
      (err: unknown) => {
        // A foreign image (qcow2, vmdk, ...): name the option that says "raw" where this export was defined.
        throw err instanceof ForeignImageError ? err.saying(e.rawOption ?? `format=raw in the definition of export "${e.name}"`) : err;
      },
    );
  // Writable exports of a format with live snapshots are swappable: a snapshot switches their top layer.
  const opener = async (e: StaticExportConfig) => snapshottable(await openStatic(e));
  const list = (c.export ?? []).map((e) => (c.readOnly ? { ...e, readOnly: true } : e));
  return ReloadableExports.open(list, opener, a.log);
}

/** The providers, the --overlay-dir one, and the base's format as resolved (what overlays are opened over). */
async function overlayProviders(a: Assembly, security: ServerSecurity): Promise<{ providers: ExportProvider[]; overlays: OverlayDirProvider | undefined; fleet: FleetProvider | undefined; baseFormat: string | undefined }> {
  const { config: c, log } = a;
  const providers: ExportProvider[] = [];
  if (c.ephemeral) {
    // No periodic bitmap sync: an ephemeral overlay is deleted on disconnect and, after a
    // kill, at the next start, so persisting its bits would only cost fdatasyncs.
    const io = new FileIo({ ...a.sio.policy, bitmapSyncMs: 0 }, a.sio.guard);
    const base = await namedFailure(`base image ${c.base}`, () => resolveBase(a, c.base!, io));
    const dir = c.ephemeralDir ?? path.join(os.tmpdir(), 'cownbd-ephemeral');
    providers.push(await namedFailure(`base image ${base.path}`, () => EphemeralProvider.create(base, c.name ?? '', dir, log, security.overlayLimits)));
  }
  let overlays: OverlayDirProvider | undefined;
  let fleetProvider: FleetProvider | undefined;
  let baseFormat: string | undefined;
  if (c.overlayDir && c.overlayStore) {
    // Fleet mode: the machines live in the object store (docs/fleet.md).
    // Loaded only in fleet mode: the fleet modules bring zod (start-up cost, test/cli/startup.test.ts).
    const [{ FleetProvider }, { parseShipPolicy }] = await Promise.all([import('../server/fleet-provider.js'), import('../fleet/machine-device.js')]);
    const base = await namedFailure(`--base ${c.base}`, () => resolveBase(a, c.base!));
    const fleet = { store: parseObjectStoreUri(c.overlayStore), policy: parseShipPolicy(c.ship ?? 'on-flush'), leaseTtlMs: Math.round((c.leaseTtl ?? 10) * 1000) };
    fleetProvider = await namedFailure(`--overlay-store ${c.overlayStore}`, () => FleetProvider.create(base, c.overlayDir!, fleet, log));
    providers.push(fleetProvider);
    baseFormat = base.format;
  } else if (c.overlayDir) {
    const base = await namedFailure(`--base ${c.base}`, () => resolveBase(a, c.base!));
    overlays = await namedFailure(`--base ${base.path} / --overlay-dir ${c.overlayDir}`, () => OverlayDirProvider.create(base, c.overlayDir!, log, security.overlayLimits));
    providers.push(overlays);
    baseFormat = base.format;
  }
  return { providers, overlays, fleet: fleetProvider, baseFormat };
}

/**
 * The base image for --overlay-dir/--ephemeral. An s3:// base is pinned here, once: new
 * overlays record the exact version served now, and a later publish never changes what
 * an existing overlay sees (docs/object-store.md).
 */
async function resolveBase(a: Assembly, base: string, io: FileIo = a.sio): Promise<BaseImage> {
  const { config: c } = a;
  // Without --base-format the base is raw, but a foreign image (qcow2, vmdk, ...) is refused (registry.ts).
  if (!isObjectStoreUri(base)) return { path: path.resolve(base), format: await namedBackingFormat(base, c.baseFormat, '--base-format raw'), ignoreMtime: c.ignoreMtime, io };
  const dev = await openImage(base, { readOnly: true, objectStore: a.objectStore });
  const pinned = dev.describe().path ?? base;
  await dev.close();
  return { path: pinned, format: FALLBACK_FORMAT.name, ignoreMtime: c.ignoreMtime, io, objectStore: a.objectStore };
}

/** Run `fn`; a failure gets `what` (the file it concerns) in front of its message. */
async function namedFailure<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new Error(`${what}: ${(err as Error).message}`);
  }
}

/** The pieces the control plane needs once the server listens. */
interface Parts {
  readonly exports: ReloadableExports;
  readonly guard: GuardedProvider;
  readonly overlays: OverlayDirProvider | undefined;
  readonly fleet: FleetProvider | undefined;
  /** The --overlay-dir base's format as resolved at start (what its overlays are opened over). */
  readonly baseFormat: string | undefined;
  readonly security: ServerSecurity;
  readonly reload: CreateServerOptions['reload'];
}

class Server implements CownbdServer {
  readonly defaultExport: string;
  readonly exportNames: readonly string[];
  readonly tlsRequired: boolean;
  readonly addresses: ListenAddress[] = [];
  controlPlane: ControlPlane | undefined;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly a: Assembly,
    readonly nbd: NbdServer,
    private readonly parts: Parts,
  ) {
    this.defaultExport = defaultExportName(a.config);
    this.exportNames = (a.config.export ?? []).map((e) => e.name);
    this.tlsRequired = parts.security.tlsMode === 'require';
  }

  async listen(): Promise<readonly ListenAddress[]> {
    const endpoints = this.a.config.listen?.length ? this.a.config.listen : [DEFAULT_ENDPOINT];
    for (const endpoint of endpoints) this.addresses.push(await listenOn(this.nbd, endpoint, { log: this.a.log, defaultExport: this.defaultExport, tlsRequired: this.tlsRequired }));
    try {
      this.controlPlane = await this.startControlPlane();
    } catch (err) {
      await this.close().catch(() => {});
      throw err;
    }
    return this.addresses;
  }

  private startControlPlane(): Promise<ControlPlane> {
    const { config: c, log, io, objectStore } = this.a;
    const { exports, guard, overlays, fleet, baseFormat, reload } = this.parts;
    return startControlPlane({
      server: this.nbd,
      guard,
      exports,
      overlays,
      ephemeralName: c.ephemeral ? (c.name ?? '') : undefined,
      inspect: (file, writable = false) =>
        openImage(file, { readOnly: !writable, format: DEFAULT_OVERLAY_FORMAT.name, backingFormat: baseFormat ?? c.baseFormat ?? FALLBACK_FORMAT.name, ignoreMtime: c.ignoreMtime, io, objectStore }),
      io,
      maxSnapshots: c.maxSnapshots,
      log,
      fleet,
      objectStoreStats: () => {
        const os = objectStore.peek();
        if (!os) return undefined;
        const cs = os.cache.stats();
        const g = os.client.stats;
        return { gets: g.gets, getBytes: g.getBytes, getErrors: g.getErrors, cacheHits: cs.hits, cacheMisses: cs.misses, cacheBytes: cs.bytes, verifyFailures: cs.verifyFailures };
      },
      reload: {
        configFile: c.config,
        initial: reload?.initial,
        cliExports: reload?.keepExports ?? [],
        cliReadOnly: Boolean(reload?.keepReadOnly),
        // The same rule buildServerSecurity() applies at start-up.
        check: (list) => {
          const identities = (c.tls ?? 'off') !== 'off' && (c.tlsPsk !== undefined || Boolean(c.tlsVerifyPeer));
          const bad = list.find((e) => e.allow?.length);
          if (bad && !identities) throw new Error(`export "${bad.name}": allow= needs client identities (TLS with a PSK file or verified certificates); restart with [tls] to use it`);
        },
      },
      admin: c.admin,
      adminTokenFile: c.adminTokenFile,
    });
  }

  uri(name = this.defaultExport, address = this.addresses[0]): string {
    if (!address) throw new Error('not listening: call listen() first');
    return formatUri(address, name, undefined, this.tlsRequired);
  }

  reload(trigger = 'api'): Promise<ReloadResult> {
    if (!this.controlPlane) return Promise.reject(new Error('not listening: call listen() first'));
    return this.controlPlane.reloader.reload(trigger);
  }

  close(): Promise<void> {
    // Object-store connections and the chunk cache end after the last device closed.
    this.closing ??= this.nbd.stop().finally(() => this.a.objectStore.close().catch(() => {}));
    return this.closing;
  }
}
