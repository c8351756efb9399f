/**
 * `cownbd serve`: the option list. Registration only: the action (serve-action.ts, with the
 * server, the formats' code and the control plane) is imported when `serve` runs, so
 * `--help`, `--version` and the image tools start without them.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import type { FileIo } from '../block/file-io.js';
import { parsePathMapping, type PathMapping } from '../formats/path-map.js';
import { FORMAT_NAMES } from '../formats/registry.js';
import { addObjectStoreOptions } from '../objectstore/cli-options.js';
import type { StaticExportConfig } from '../server/exports.js';
import { addSecurityOptions } from './security-options.js';
import { DEFAULT_BITMAP_SYNC_MS } from '../block/io-policy.js';
import { DEFAULT_BIND, DEFAULT_EPHEMERAL_DIR, DEFAULT_PORT, parseAdminEndpoint, parseBitmapSyncInterval, parseExportSpec, parseLeaseTtl, parsePort, type ServeOptions } from './serve-options.js';
import { addProcessOptions } from './serve-process.js';

export function registerServeCommand(program: Command, io: FileIo): void {
  const serve = program.command('serve').description('serve disk images (raw, cow, add-cow) over NBD').argument('[image]', 'image to export (as export NAME, default "")');
  addServeOptions(serve);
  addProcessOptions(serve, true);
  addSecurityOptions(serve.optionsGroup('Security and limits:'));
  addObjectStoreOptions(serve.optionsGroup('Object storage (s3:// images):'));
  serve.optionsGroup('');
  serve.addHelpText('after', SERVE_EXAMPLES);
  serve.action(async (image: string | undefined, cliOptions: ServeOptions, cmd: Command) => {
    const { serveAction } = await import('./serve-action.js');
    await serveAction(image, cliOptions, cmd, io);
  });
}

function addServeOptions(serve: Command): void {
  serve
    .optionsGroup('Listening:')
    .option('-p, --port <port>', 'TCP port (0 = pick a free port)', parsePort, DEFAULT_PORT)
    // COWNBD_BIND: the container image sets 0.0.0.0 (its loopback is unreachable from outside).
    .addOption(new Option('-b, --bind <addr>', 'address to listen on').env('COWNBD_BIND').default(DEFAULT_BIND))
    .option('-U, --socket <path>', 'listen on a Unix socket instead of TCP')
    .option('--background', 'return once listening (every export open, --pidfile written); the server runs on detached (qemu-nbd --fork); stop it with its pid')
    .optionsGroup('Exports:')
    .option('-n, --name <name>', 'export name of IMAGE', '')
    .option('--description <text>', 'export description of IMAGE')
    .option('-r, --read-only', 'export read-only (applies to every export)')
    .addOption(new Option('-f, --format <format>', 'format of IMAGE (default: probed)').choices([...FORMAT_NAMES]))
    .addOption(new Option('--backing-format <format>', 'format of IMAGE\'s backing file').choices([...FORMAT_NAMES]))
    .option(
      '--export <spec>',
      'add an export NAME=PATH[,ro][,format=F][,backing-format=F][,allow=ID]...[,description=TEXT] (repeatable)',
      (v: string, prev: StaticExportConfig[]) => [...prev, parseExportSpec(v)],
      [] as StaticExportConfig[],
    )
    .optionsGroup('Overlays (per machine, per connection):')
    .option('--base <path>', 'golden base image for --overlay-dir (never modified)')
    // No commander default: an absent --base-format is what lets a foreign base (qcow2, vmdk, ...) be refused.
    .addOption(new Option('--base-format <format>', 'format of the base image (default raw; a foreign image such as qcow2 is refused unless this says raw)').choices([...FORMAT_NAMES]))
    .option('--overlay-dir <dir>', 'serve every export NAME as its own cow overlay DIR/NAME.cow over --base, created on first connect')
    .option('--ephemeral', 'IMAGE (or --base) is a base: every connection gets its own temporary overlay, deleted on disconnect (no CAN_MULTI_CONN)')
    .option('--ephemeral-dir <dir>', 'where ephemeral overlays live', DEFAULT_EPHEMERAL_DIR)
    .option('--create-dirs', 'create a missing --overlay-dir/--ephemeral-dir (without it a missing directory is an error: a mistyped one would boot blank disks)')
    .option('--overlay-store <s3-uri>', 'fleet mode: --overlay-dir machines live in the object store at s3://BUCKET/PREFIX and move between servers; one server serves a machine at a time (docs/fleet.md)')
    .option('--ship <policy>', 'fleet: when machines ship to --overlay-store: on-flush (FLUSH/FUA answered once the data is in the store) or interval=DURATION (e.g. interval=10s)', 'on-flush')
    .option('--lease-ttl <seconds>', 'fleet: machine lease TTL; the machines of a dead server move after about this long', parseLeaseTtl, 10)
    .option(
      '--bitmap-sync-interval <seconds>',
      'writable overlays persist new allocation bits (data first, as FLUSH does) this often while any are unpersisted: what a killed process can lose (0 = only on FLUSH/close)',
      parseBitmapSyncInterval,
      DEFAULT_BITMAP_SYNC_MS / 1000,
    )
    .optionsGroup('Image files:')
    .option('--backing-path-map <old=new>', 'serve overlays whose backing (or add-cow image) file moved: a recorded path under OLD is opened under NEW instead (repeatable; still validated)', parseMapping)
    .option(
      '--allow-path <dir>',
      'paths named inside image headers (backing files, add-cow image files) must lie under DIR (repeatable; default: anywhere)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--ignore-mtime', 'cow exports: accept a backing file whose mtime no longer matches the header (recovery after the base was touched but not changed)')
    .optionsGroup('Operating:')
    .option('-c, --config <file>', 'TOML configuration file (docs/configuration.md); options given on the command line override it; SIGHUP reloads it')
    .option('--admin <endpoint>', 'admin API (HTTP/JSON) on unix:/path, or HOST:PORT with --admin-token-file', parseAdminEndpoint)
    .option('--admin-token-file <file>', 'bearer token clients of a TCP admin API must send');
}

const SERVE_EXAMPLES = `
Examples:
  cownbd serve vm1.cow                                  # one cow overlay on nbd://127.0.0.1:10809/
  cownbd serve -r -f qcow2 golden.qcow2                 # a qcow2 image, read-only
  cownbd serve --base golden.img --overlay-dir vms      # nbd://HOST/NAME -> vms/NAME.cow, per machine
  cownbd serve --ephemeral test-disk.img --background   # a fresh overlay per connection; returns when ready
  cownbd serve -p 0 --run 'nbdinfo --size "$uri"' disk.raw   # captive: serve while CMD runs
  cownbd serve -c /etc/cownbd/cownbd.toml               # everything from a config file (SIGHUP reloads)
More: README.md and docs/ (installed with the package).
`;

function parseMapping(v: string, prev: PathMapping[] = []): PathMapping[] {
  try {
    return [...prev, parsePathMapping(v)];
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}
