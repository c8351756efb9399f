/**
 * `cownbd ctl`: a client for the admin API of a running `serve`.
 *
 *   cownbd ctl --admin unix:/run/cownbd/admin.sock exports
 *   cownbd ctl connections | reload | snapshot vm1 | compact vm1 --keep 2 | reset vm1 --force | delete vm1 --force
 *   cownbd ctl machines | release vm1                      (fleet: --overlay-store, docs/fleet.md)
 *
 * Output: a table when stdout is a terminal, JSON otherwise or with --json. An API error
 * is one line on stderr ("cownbd: export "vm1" has 2 connected client(s)…") and status 1.
 * The endpoint comes from --admin, else COWNBD_ADMIN (read when the command runs).
 * Registration only; the client is ctl-client.ts, loaded when a ctl command runs.
 */
import type { Command } from 'commander';
import type { CtlOptions, CtlView } from './ctl-client.js';

const enc = encodeURIComponent;

async function run(cmd: Command, method: string, urlPath: string, view?: CtlView): Promise<void> {
  const { runCtl } = await import('./ctl-client.js');
  await runCtl(cmd.optsWithGlobals<CtlOptions>(), method, urlPath, view);
}

export function registerCtlCommand(program: Command): void {
  const ctl = program
    .command('ctl')
    .description('talk to the admin API of a running serve (table on a terminal, JSON otherwise)')
    .option('--admin <endpoint>', 'unix:/path or HOST:PORT of the admin API (default: $COWNBD_ADMIN)')
    .option('--token-file <file>', 'bearer token for a TCP admin API')
    .option('--json', 'print JSON even on a terminal');
  ctl.command('exports').description('list exports with their chains, bytes per layer and connections')
    .action((_o, cmd: Command) => run(cmd, 'GET', '/exports', 'exports'));
  ctl.command('connections').description('list connected clients')
    .action((_o, cmd: Command) => run(cmd, 'GET', '/connections', 'connections'));
  ctl.command('reload').description('re-read the configuration file (like SIGHUP)')
    .action((_o, cmd: Command) => run(cmd, 'POST', '/reload'));
  ctl.command('snapshot').argument('<name>').description('freeze the export\'s overlay and stack a new one, live')
    .action((name: string, _o, cmd: Command) => run(cmd, 'POST', `/exports/${enc(name)}/snapshot`));
  ctl.command('compact').argument('<name>').option('--keep <n>', 'snapshot layers to keep (the oldest are merged into one; default 1)')
    .option('--force', 'disconnect connected clients first (compaction is not live)')
    .description('merge the export\'s oldest snapshot layers into one')
    .action((name: string, o: { keep?: string; force?: boolean }, cmd: Command) => {
      const q = [o.keep !== undefined ? `keep=${enc(o.keep)}` : '', o.force ? 'force=true' : ''].filter(Boolean).join('&');
      return run(cmd, 'POST', `/exports/${enc(name)}/compact${q ? `?${q}` : ''}`);
    });
  ctl.command('reset').argument('<name>').option('--force', 'disconnect connected clients first')
    .description('throw the overlay away: a pristine disk over its backing')
    .action((name: string, o: { force?: boolean }, cmd: Command) => run(cmd, 'POST', `/exports/${enc(name)}/reset${o.force ? '?force=true' : ''}`));
  ctl.command('delete').argument('<name>').option('--force', 'disconnect connected clients first')
    .description('delete a per-machine overlay (--overlay-dir) and its snapshot layers')
    .action((name: string, o: { force?: boolean }, cmd: Command) => run(cmd, 'DELETE', `/exports/${enc(name)}${o.force ? '?force=true' : ''}`));
  ctl.command('machines').description('fleet (--overlay-store): the machines this server serves, lease, last ship and ship lag')
    .action((_o, cmd: Command) => run(cmd, 'GET', '/machines', 'machines'));
  ctl.command('release').argument('<name>').description('fleet: ship the machine, hand its lease back; its clients reconnect to another server')
    .action((name: string, _o, cmd: Command) => run(cmd, 'POST', `/machines/${enc(name)}/release`));
  ctl.command('metrics').description('print the Prometheus metrics')
    .action((_o, cmd: Command) => run(cmd, 'GET', '/metrics', 'text'));
}
