/**
 * `cownbd serve` at run time (registered in serve-register.ts, imported when serve runs):
 * the action, in steps (options → config for createServer() → listen → process options).
 * The server itself is assembled by the library (api/create-server.ts), the same code a
 * program using cownbd calls; what stays here belongs to a process: the config file's
 * merge with the command line, systemd's sockets, signal handlers (SIGINT/SIGTERM in
 * serve-command.ts, SIGHUP for reloads), V8's --expose-gc and the lines on stdout.
 *
 * The config file's code (TOML parser, zod schema) is imported only with --config; the
 * admin API's (fastify, prom-client) only with an admin endpoint (control-plane.ts).
 */
import type { Command } from 'commander';
import { createServer } from '../api/create-server.js';
import { checkServerConfig, type ServerConfig } from '../api/server-config.js';
import type { FileIo } from '../block/file-io.js';
import type { FileOptions } from '../control/config.js';
import { createLogger } from '../logging.js';
import { storeConfigFrom } from '../objectstore/cli-options.js';
import { exposeGc } from '../server/idle-gc.js';
import { checkServePaths, exportConfigs, listenEndpoints, logNativeAddon, runServer, takeSystemdListenFds } from './serve-command.js';
import { UsageError, type ServeOptions } from './serve-options.js';
import { applyProcessOptions } from './serve-process.js';
import { isBackgroundChild, reportReady, startInBackground } from './background.js';

export async function serveAction(image: string | undefined, cliOptions: ServeOptions, cmd: Command, io: FileIo): Promise<void> {
  if (cliOptions.background && !isBackgroundChild(process.env)) {
    if (cliOptions.run !== undefined) throw new UsageError('--background and --run exclude each other (--run already waits for the server)');
    if (cliOptions.exitWithParent) throw new UsageError('--background and --exit-with-parent exclude each other (the parent exits once the server is ready)');
    process.exit(await startInBackground(process.argv, process.execArgv, process.env));
  }
  const merged = await withFileOptions(cliOptions, cmd);
  const fileOptions = merged.fileOptions;
  const o = ephemeralImageFormat(merged.o, image, cmd);
  if (o.admin && !('path' in o.admin) && !o.adminTokenFile) throw new UsageError('--admin HOST:PORT needs --admin-token-file (the bearer token clients must send)');
  const log = createLogger({ level: captiveLogLevel(o, cmd, fileOptions) });
  logNativeAddon(log, io.policy);
  storeConfigFrom(o); // bad object-store flags fail now, not at the first s3:// image
  // Read (and unset) the activation variables first, before anything can spawn a child.
  const listenFds = takeSystemdListenFds();
  if (listenFds.length) {
    const ignored = ['port', 'bind', 'socket'].filter((k) => cmd.getOptionValueSource(k) === 'cli');
    if (ignored.length) log.warn({ ignored, fds: listenFds }, 'socket activated: ignoring --port/--bind/--socket');
  }
  // With --ephemeral the positional IMAGE is the base, not a static export.
  const ephemeralBase = o.ephemeral ? (o.base ?? image) : undefined;
  const configs = exportConfigs(o.ephemeral ? undefined : image, o, Boolean(o.overlayDir || o.ephemeral || o.config));
  const config: ServerConfig = { ...o, base: ephemeralBase ?? o.base, export: configs, listen: listenEndpoints(o, listenFds) };
  try {
    checkServerConfig(config);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  await checkServePaths(configs, o, ephemeralBase, listenFds.length > 0);
  // What a reload keeps: the exports named on the command line itself.
  const keepExports = exportConfigs(o.ephemeral ? undefined : image, { ...o, export: cliOptions.export }, true);
  const server = await createServer(config, { log, io, gc: exposeGc(), reload: { initial: fileOptions, keepExports, keepReadOnly: Boolean(cliOptions.readOnly) } }).catch((err: unknown) => {
    throw new UsageError((err as Error).message);
  });
  // SIGHUP reloads (failures are logged, never fatal) from before the listening lines on.
  const running = await runServer(server, o, log, () => server.controlPlane!.reloader.installSighup());
  const api = server.controlPlane!.api;
  if (api && o.run === undefined) process.stdout.write(`cownbd: admin API on ${api.address}\n`);
  await applyProcessOptions({ ...running, defaultExport: server.defaultExport }, o, log, process.env);
  if (isBackgroundChild(process.env)) reportReady();
}

/**
 * `-f` names IMAGE's format, and with `--ephemeral IMAGE` that image is the base: `-f` is
 * then the base format (--base-format defaults to raw, which read a qcow2 base's container
 * bytes as the disk). Both given and different is refused.
 */
function ephemeralImageFormat(o: ServeOptions, image: string | undefined, cmd: Command): ServeOptions {
  if (!o.ephemeral || o.base || image === undefined || o.format === undefined) return o;
  if (cmd.getOptionValueSource('baseFormat') === 'cli' && o.baseFormat !== o.format) {
    throw new UsageError(`--ephemeral ${image}: -f ${o.format} and --base-format ${o.baseFormat} disagree about its format (give one)`);
  }
  return { ...o, baseFormat: o.format };
}

/**
 * Under --run the server is a helper of CMD: only warnings and errors reach stderr unless a
 * level was asked for (--log-level, COWNBD_LOG_LEVEL or the config file), as nbdkit --run
 * stays quiet.
 */
function captiveLogLevel(o: ServeOptions, cmd: Command, fileOptions: FileOptions | undefined): string {
  if (o.run === undefined || cmd.getOptionValueSource('logLevel') !== 'default' || fileOptions?.logLevel !== undefined) return o.logLevel;
  return 'warn';
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
