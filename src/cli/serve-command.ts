/**
 * `cownbd serve`: parse the export definitions, start an NbdServer, print one
 * "cownbd: listening on <uri>" line per listener on stdout, and stop gracefully on
 * SIGINT/SIGTERM (a second signal exits at once).
 *
 *   cownbd serve disk.img                         export "" on 127.0.0.1:10809
 *   cownbd serve -U /run/nbd.sock -n vm1 vm1.cow  export "vm1" on a Unix socket
 *   cownbd serve --export a=a.cow --export b=b.raw,ro,description=Base disk
 */
import { access, constants } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger, type Logger } from '../logging.js';
import { IMAGE_FORMATS, type ImageFormat } from '../formats/open-image.js';
import { NbdServer, type ListenAddress, type ListenEndpoint } from '../server/listener.js';
import { CompositeExportProvider, StaticExportProvider, type ExportProvider, type StaticExportConfig } from '../server/exports.js';
import { EphemeralProvider, OverlayDirProvider } from '../server/overlay-providers.js';

export const DEFAULT_PORT = 10809;
export const DEFAULT_BIND = '127.0.0.1';

export interface ServeOptions {
  port: number;
  bind: string;
  socket?: string;
  name: string;
  description?: string;
  readOnly?: boolean;
  format?: ImageFormat;
  backingFormat?: ImageFormat;
  export: StaticExportConfig[];
  logLevel?: string;
  base?: string;
  baseFormat?: ImageFormat;
  overlayDir?: string;
  ephemeral?: boolean;
  ephemeralDir?: string;
}

export function parsePort(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) throw new InvalidArgumentError(`port must be an integer 0-65535 (got "${value}")`);
  return n;
}

export function parseFormat(value: string, field = 'format'): ImageFormat {
  if (!(IMAGE_FORMATS as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`${field} must be one of ${IMAGE_FORMATS.join(', ')} (got "${value}")`);
  }
  return value as ImageFormat;
}

/**
 * `NAME=PATH[,opts]` with opts `ro`, `format=F`, `backing-format=F`, `description=TEXT`.
 * description= takes the rest of the string, so it may contain commas.
 */
export function parseExportSpec(spec: string): StaticExportConfig {
  const eq = spec.indexOf('=');
  if (eq < 0) throw new InvalidArgumentError(`--export must be NAME=PATH[,opts] (got "${spec}")`);
  const name = spec.slice(0, eq);
  let rest = spec.slice(eq + 1);
  let description: string | undefined;
  const d = rest.indexOf(',description=');
  if (d >= 0) {
    description = rest.slice(d + ',description='.length);
    rest = rest.slice(0, d);
  }
  const [path, ...opts] = rest.split(',');
  if (!path) throw new InvalidArgumentError(`--export "${spec}": PATH is empty`);
  if (Buffer.byteLength(name) > 4096) throw new InvalidArgumentError(`--export "${name.slice(0, 40)}…": name longer than 4096 bytes`);
  const config: { -readonly [K in keyof StaticExportConfig]: StaticExportConfig[K] } = { name, path, description };
  for (const opt of opts) {
    if (opt === 'ro' || opt === 'readonly') config.readOnly = true;
    else if (opt === 'rw') config.readOnly = false;
    else if (opt.startsWith('format=')) config.format = parseFormat(opt.slice(7), `--export ${name} format`);
    else if (opt.startsWith('backing-format=')) config.backingFormat = parseFormat(opt.slice(15), `--export ${name} backing-format`);
    else throw new InvalidArgumentError(`--export "${spec}": unknown option "${opt}" (expected ro, format=, backing-format=, description=)`);
  }
  return config;
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
  if (list.length === 0 && !allowNone) throw new Error('nothing to serve: give an IMAGE or at least one --export NAME=PATH');
  const seen = new Set<string>();
  for (const e of list) {
    if (seen.has(e.name)) throw new Error(`export name "${e.name}" is used twice`);
    seen.add(e.name);
  }
  return list;
}

export function formatUri(addr: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (addr.path) return `nbd+unix:///${name}?socket=${addr.path}`;
  const host = addr.host && addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  return `nbd://${host}:${addr.port}/${name}`;
}

export interface RunningServer {
  server: NbdServer;
  uris: string[];
}

/**
 * Start a server for `provider` on the endpoint from the options, print the listening
 * line(s) and install signal handlers. Shared by `serve` and `demo`.
 */
export async function runServer(
  provider: ExportProvider,
  o: { port: number; bind: string; socket?: string },
  defaultExport: string,
  log: Logger,
): Promise<RunningServer> {
  const server = new NbdServer({ provider, log });
  const endpoint: ListenEndpoint = o.socket ? { path: o.socket } : { host: o.bind, port: o.port };
  // Handlers first: whoever reads the listening line may signal us immediately.
  installSignalHandlers(server, log);
  const addr = await server.listen(endpoint);
  const uri = formatUri(addr, defaultExport);
  log.info({ uri }, 'listening');
  process.stdout.write(`cownbd: listening on ${uri}\n`);
  return { server, uris: [uri] };
}

export function installSignalHandlers(server: NbdServer, log: Logger): void {
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      log.warn({ signal }, 'second signal: exiting immediately');
      process.exit(1);
    }
    signalled = true;
    log.info({ signal }, 'signal received: shutting down');
    server.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('serve disk images (raw, cow, add-cow) over NBD')
    .argument('[image]', 'image to export (as export NAME, default "")')
    .option('-p, --port <port>', 'TCP port (0 = pick a free port)', parsePort, DEFAULT_PORT)
    .option('-b, --bind <addr>', 'address to listen on', DEFAULT_BIND)
    .option('-U, --socket <path>', 'listen on a Unix socket instead of TCP')
    .option('-n, --name <name>', 'export name of IMAGE', '')
    .option('--description <text>', 'export description of IMAGE')
    .option('-r, --read-only', 'export read-only (applies to every export)')
    .addOption(new Option('-f, --format <format>', 'format of IMAGE (default: probed)').choices(IMAGE_FORMATS as string[]))
    .addOption(new Option('--backing-format <format>', 'format of IMAGE\'s backing file').choices(IMAGE_FORMATS as string[]))
    .option(
      '--export <spec>',
      'add an export NAME=PATH[,ro][,format=F][,backing-format=F][,description=TEXT] (repeatable)',
      (v: string, prev: StaticExportConfig[]) => [...prev, parseExportSpec(v)],
      [] as StaticExportConfig[],
    )
    .option('--base <path>', 'golden base image for --overlay-dir (never modified)')
    .addOption(new Option('--base-format <format>', 'format of the base image (never probed)').choices(IMAGE_FORMATS as string[]).default('raw'))
    .option('--overlay-dir <dir>', 'serve every export NAME as its own cow overlay DIR/NAME.cow over --base, created on first connect')
    .option('--ephemeral', 'IMAGE (or --base) is a base: every connection gets its own temporary overlay, deleted on disconnect (no CAN_MULTI_CONN)')
    .option('--ephemeral-dir <dir>', 'where ephemeral overlays live', path.join(os.tmpdir(), 'cownbd-ephemeral'))
    .option('--log-level <level>', 'trace, debug, info, warn, error (logs go to stderr)', 'info')
    .action(async (image: string | undefined, o: ServeOptions) => {
      const log = createLogger({ level: o.logLevel });
      if (o.overlayDir && !o.base) throw new Error('--overlay-dir needs --base (the golden image every overlay is made over)');
      if (o.ephemeral && !(o.base ?? image)) throw new Error('--ephemeral needs a base image: cownbd serve --ephemeral golden.img');
      if (o.ephemeral && o.readOnly) throw new Error('--ephemeral overlays are writable by design; drop --read-only');
      // With --ephemeral the positional IMAGE is the base, not a static export.
      const ephemeralBase = o.ephemeral ? (o.base ?? image) : undefined;
      const configs = exportConfigs(o.ephemeral ? undefined : image, o, Boolean(o.overlayDir || o.ephemeral));
      // Fail at startup, not at the first client, when an image is missing or unreadable.
      for (const c of configs) {
        try {
          await access(c.path, c.readOnly ? constants.R_OK : constants.R_OK | constants.W_OK);
        } catch (err) {
          throw new Error(`export "${c.name}": cannot access ${c.path}: ${(err as Error).message}`);
        }
      }
      const providers: ExportProvider[] = [];
      if (configs.length) providers.push(new StaticExportProvider(configs, log));
      if (ephemeralBase) {
        const base = { path: path.resolve(ephemeralBase), format: o.baseFormat ?? 'raw' };
        providers.push(await EphemeralProvider.create(base, o.name, o.ephemeralDir!, log));
      }
      if (o.overlayDir) {
        const base = { path: path.resolve(o.base!), format: o.baseFormat ?? 'raw' };
        providers.push(await OverlayDirProvider.create(base, o.overlayDir, log));
      }
      const provider = providers.length === 1 ? providers[0]! : new CompositeExportProvider(providers);
      const defaultName = configs[0]?.name ?? (ephemeralBase ? o.name : 'vm1');
      await runServer(provider, o, defaultName, log);
    });
}
