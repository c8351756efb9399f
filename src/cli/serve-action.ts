/**
 * `cownbd serve` at run time (registered in serve-register.ts, imported when serve runs):
 * the action, in steps (options → exports → extra providers → listen → control plane).
 * The helpers they use (export lists, runServer, path checks) live in serve-command.ts.
 *
 * The config file's code (TOML parser, zod schema) is imported only with --config; the
 * admin API's (fastify, prom-client) only with an admin endpoint (control-plane.ts).
 */
import path from 'node:path';
import type { Command } from 'commander';
import { FileIo } from '../block/file-io.js';
import { OpenGuard } from '../block/open-guard.js';
import type { FileOptions } from '../control/config.js';
import { ControlPlaneError, startControlPlane } from '../control/control-plane.js';
import { ReloadableExports } from '../control/export-set.js';
import { GuardedProvider } from '../control/guarded-provider.js';
import { snapshottable } from '../control/swappable-device.js';
import { openImage } from '../formats/open-image.js';
import { DEFAULT_OVERLAY_FORMAT, FALLBACK_FORMAT } from '../formats/registry.js';
import { createLogger, type Logger } from '../logging.js';
import { lazyObjectStore, storeConfigFrom, type LazyObjectStore } from '../objectstore/cli-options.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import { CompositeExportProvider, type ExportProvider, type StaticExportConfig } from '../server/exports.js';
import { EphemeralProvider, OverlayDirProvider, type BaseImage } from '../server/overlay-providers.js';
import { buildServerSecurity, type ServerSecurity } from '../server/security.js';
import { securityOptionsFrom } from './security-options.js';
import { checkServePaths, exportConfigs, logNativeAddon, namedFailure, runServer, takeSystemdListenFds } from './serve-command.js';
import { UsageError, type ServeOptions } from './serve-options.js';
import { applyProcessOptions } from './serve-process.js';

/** What the steps of one `serve` share. */
interface ServeContext {
  readonly image: string | undefined;
  readonly o: ServeOptions;
  readonly cliOptions: ServeOptions;
  readonly fileOptions: FileOptions | undefined;
  readonly log: Logger;
  readonly io: FileIo;
  /** The server's FileIo: the same policy plus the open-file guard (block/open-guard.ts). */
  readonly sio: FileIo;
  readonly objectStore: LazyObjectStore;
  /** With --ephemeral the positional IMAGE is the base, not a static export. */
  readonly ephemeralBase: string | undefined;
}

export async function serveAction(image: string | undefined, cliOptions: ServeOptions, cmd: Command, io: FileIo): Promise<void> {
  const { o, fileOptions } = await withFileOptions(cliOptions, cmd);
  if (o.admin && !('path' in o.admin) && !o.adminTokenFile) throw new UsageError('--admin HOST:PORT needs --admin-token-file (the bearer token clients must send)');
  const log = createLogger({ level: o.logLevel });
  logNativeAddon(log, io.policy);
  storeConfigFrom(o); // bad object-store flags fail now, not at the first s3:// image
  // Read (and unset) the activation variables first, before anything can spawn a child.
  const listenFds = takeSystemdListenFds();
  if (listenFds.length) {
    const ignored = ['port', 'bind', 'socket'].filter((k) => cmd.getOptionValueSource(k) === 'cli');
    if (ignored.length) log.warn({ ignored, fds: listenFds }, 'socket activated: ignoring --port/--bind/--socket');
  }
  if (o.overlayDir && !o.base) throw new UsageError('--overlay-dir needs --base (the golden image every overlay is made over)');
  if (o.ephemeral && !(o.base ?? image)) throw new UsageError('--ephemeral needs a base image: cownbd serve --ephemeral golden.img');
  if (o.ephemeral && o.readOnly) throw new UsageError('--ephemeral overlays are writable by design; drop --read-only');
  const ephemeralBase = o.ephemeral ? (o.base ?? image) : undefined;
  const ctx: ServeContext = { image, o, cliOptions, fileOptions, log, io, sio: new FileIo(io.policy, new OpenGuard(o.allowPath)), objectStore: lazyObjectStore(o, log, io), ephemeralBase };
  const configs = exportConfigs(o.ephemeral ? undefined : image, o, Boolean(o.overlayDir || o.ephemeral || o.config));
  await checkServePaths(configs, o, ephemeralBase, listenFds.length > 0);
  await serveExports(ctx, configs, listenFds);
}

/** --config: the file's options, and the command line merged over them (given wins). */
async function withFileOptions(cliOptions: ServeOptions, cmd: Command): Promise<{ o: ServeOptions; fileOptions: FileOptions | undefined }> {
  if (!cliOptions.config) return { o: cliOptions, fileOptions: undefined };
  const { ConfigError, loadConfigFile, mergeFileOptions } = await import('../control/config.js');
  let fileOptions: FileOptions;
  try {
    fileOptions = await loadConfigFile(cliOptions.config);
  } catch (err) {
    throw err instanceof ConfigError ? new UsageError(err.message) : err;
  }
  return { o: mergeFileOptions(cliOptions, fileOptions, (k: string) => cmd.getOptionValueSource(k) === 'cli'), fileOptions };
}

/** Open the static exports and the overlay providers, listen, start the control plane. */
async function serveExports(ctx: ServeContext, configs: StaticExportConfig[], listenFds: number[]): Promise<void> {
  const { o, log } = ctx;
  const golden = ctx.ephemeralBase ?? (o.overlayDir ? o.base : undefined);
  // Every export's files go through one registry (a file read-only in one layer is never
  // opened writable by another export) and --allow-path; see block/open-guard.ts.
  if (golden && !isObjectStoreUri(golden)) await ctx.sio.guard!.pinReadOnly(path.resolve(golden));
  const exports = await openStaticExports(ctx, configs);
  let security: ServerSecurity;
  try {
    security = await buildServerSecurity(securityOptionsFrom(o), exports, log);
  } catch (err) {
    await exports.close().catch(() => {});
    throw new UsageError((err as Error).message);
  }
  const { providers, overlays } = await overlayProviders(ctx, security);
  // The control plane holds new clients off an export while it resets or snapshots it.
  const all: ExportProvider[] = [exports, ...providers];
  const provider = new GuardedProvider(all.length === 1 ? all[0]! : new CompositeExportProvider(all));
  const defaultName = configs[0]?.name ?? (ctx.ephemeralBase ? o.name : 'vm1');
  const running = await runServer(provider, { ...o, listenFds, io: ctx.io, exportNames: configs.map((c) => c.name), security }, defaultName, log);
  const cliExports = exportConfigs(o.ephemeral ? undefined : ctx.image, { ...o, export: ctx.cliOptions.export }, true);
  await startControlPlane({
    server: running.server,
    guard: provider,
    exports,
    overlays,
    ephemeralName: ctx.ephemeralBase ? o.name : undefined,
    inspect: (file) =>
      openImage(file, { readOnly: true, format: DEFAULT_OVERLAY_FORMAT.name, backingFormat: o.baseFormat ?? FALLBACK_FORMAT.name, ignoreMtime: o.ignoreMtime, io: ctx.io, objectStore: ctx.objectStore }),
    io: ctx.io,
    maxSnapshots: o.maxSnapshots,
    log,
    objectStoreStats: () => {
      const os = ctx.objectStore.peek();
      if (!os) return undefined;
      const c = os.cache.stats();
      const g = os.client.stats;
      return { gets: g.gets, getBytes: g.getBytes, getErrors: g.getErrors, cacheHits: c.hits, cacheMisses: c.misses, cacheBytes: c.bytes, verifyFailures: c.verifyFailures };
    },
    // What a reload keeps: the exports named on the command line itself.
    reload: {
      configFile: o.config,
      initial: ctx.fileOptions,
      cliExports,
      cliReadOnly: Boolean(ctx.cliOptions.readOnly),
      // The same rule buildServerSecurity() applies at start-up.
      check: (list) => {
        const identities = o.tls !== 'off' && (o.tlsPsk !== undefined || Boolean(o.tlsVerifyPeer));
        const bad = list.find((c) => c.allow?.length);
        if (bad && !identities) throw new Error(`export "${bad.name}": allow= needs client identities (TLS with a PSK file or verified certificates); restart with [tls] to use it`);
      },
    },
    admin: o.admin,
    adminTokenFile: o.adminTokenFile,
  }).catch((err: unknown) => {
    throw err instanceof ControlPlaneError ? new UsageError(err.message) : err;
  });
  await applyProcessOptions({ ...running, defaultExport: defaultName }, o, log, process.env);
}

async function openStaticExports(ctx: ServeContext, configs: StaticExportConfig[]): Promise<ReloadableExports> {
  const { o } = ctx;
  const openStatic = (c: StaticExportConfig) =>
    openImage(c.path, { readOnly: c.readOnly, format: c.format, backingFormat: c.backingFormat, ignoreMtime: o.ignoreMtime, io: ctx.sio, pathMap: o.backingPathMap, objectStore: ctx.objectStore });
  // Writable exports of a format with live snapshots are swappable: a snapshot switches their top layer.
  const opener = async (c: StaticExportConfig) => snapshottable(await openStatic(c));
  try {
    return await ReloadableExports.open(configs, opener, ctx.log);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

async function overlayProviders(ctx: ServeContext, security: ServerSecurity): Promise<{ providers: ExportProvider[]; overlays: OverlayDirProvider | undefined }> {
  const { o, log } = ctx;
  const providers: ExportProvider[] = [];
  if (ctx.ephemeralBase) {
    const ephemeralBase = ctx.ephemeralBase;
    const base = await namedFailure(`base image ${ephemeralBase}`, () => resolveBase(ephemeralBase, o, ctx.sio, ctx.objectStore));
    providers.push(await namedFailure(`base image ${base.path}`, () => EphemeralProvider.create(base, o.name, o.ephemeralDir!, log, security.overlayLimits)));
  }
  let overlays: OverlayDirProvider | undefined;
  if (o.overlayDir) {
    const base = await namedFailure(`--base ${o.base}`, () => resolveBase(o.base!, o, ctx.sio, ctx.objectStore));
    overlays = await namedFailure(`--base ${base.path} / --overlay-dir ${o.overlayDir}`, () => OverlayDirProvider.create(base, o.overlayDir!, log, security.overlayLimits));
    providers.push(overlays);
  }
  return { providers, overlays };
}

/**
 * The base image for --overlay-dir/--ephemeral. An s3:// base is pinned here, once: new
 * overlays record the exact version served now, and a later publish never changes what
 * an existing overlay sees (docs/object-store.md).
 */
async function resolveBase(base: string, o: ServeOptions, io: FileIo, objectStore: LazyObjectStore): Promise<BaseImage> {
  if (!isObjectStoreUri(base)) return { path: path.resolve(base), format: o.baseFormat ?? FALLBACK_FORMAT.name, ignoreMtime: o.ignoreMtime, io };
  const dev = await openImage(base, { readOnly: true, objectStore });
  const pinned = dev.describe().path ?? base;
  await dev.close();
  return { path: pinned, format: FALLBACK_FORMAT.name, ignoreMtime: o.ignoreMtime, io, objectStore };
}
