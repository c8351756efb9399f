/**
 * The process options `serve` and `demo` share (nbdkit's habits), registered and applied
 * in one place so the commands themselves stay about exports:
 *
 *   --log-level L / COWNBD_LOG_LEVEL   validated; the variable is read here, by the CLI
 *   --foreground (nbdkit)              accepted; the default (serve --background forks: background.ts)
 *   --pidfile FILE                     written once listening, removed at exit
 *   --exit-with-parent                 stop gracefully when the parent process dies
 *   --print-uri                        print the bare URI(s), one per line, on stdout
 *   --run CMD                          captive mode (captive.ts)
 *   NOTIFY_SOCKET                      READY=1 once listening (systemd Type=notify)
 *
 * Order at start-up: listen → pidfile → READY=1 → --run. A process that sees the pidfile
 * or READY can connect at once.
 */
import os from 'node:os';
import { Command, Option } from 'commander';
import type { Logger } from '../logging.js';
import type { NbdServer, ListenAddress } from '../server/listener.js';
import { captiveEnv, runCaptive } from './captive.js';
import { systemdNotifier, watchParent, writePidfile } from './process-lifecycle.js';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

export interface ProcessOptions {
  logLevel: string;
  foreground?: boolean;
  pidfile?: string;
  exitWithParent?: boolean;
  printUri?: boolean;
  run?: string;
}

/** The running server as the process options need it. */
export interface ServerProcess {
  readonly server: NbdServer;
  readonly addresses: readonly ListenAddress[];
  /** Default export name (for --run's $uri). */
  readonly defaultExport: string;
  /** Graceful stop, then exit with `status` (the same path as SIGTERM). */
  shutdown(reason: string, status: number): void;
  /** Run `fn` when a graceful stop begins. */
  onStop(fn: () => void): void;
}

export function logLevelOption(): Option {
  return new Option('--log-level <level>', 'trace, debug, info, warn, error (logs go to stderr)')
    .choices(LOG_LEVELS as unknown as string[])
    .env('COWNBD_LOG_LEVEL')
    .default('info');
}

/** Add the shared process options to `cmd` (`withRun`: serve only). */
export function addProcessOptions(cmd: Command, withRun: boolean): Command {
  cmd
    .addOption(logLevelOption())
    .option('--foreground', 'stay in the foreground (the default; accepted for nbdkit users)')
    .option('--pidfile <file>', 'write the process id to FILE once listening (removed at exit)')
    .option('--exit-with-parent', 'stop (gracefully) when the parent process exits')
    .option('--print-uri', 'print only the URI of each export, one per line, on stdout');
  if (withRun) {
    cmd.option('--run <cmd>', 'captive mode: run CMD (sh -c) with $uri $nbd $port $unixsocket $exportname set, stop when it exits, exit with its status');
  }
  return cmd;
}

/** Everything that happens once the listeners are up. */
export async function applyProcessOptions(p: ServerProcess, o: ProcessOptions, log: Logger, env: NodeJS.ProcessEnv): Promise<void> {
  if (o.pidfile) writePidfile(o.pidfile);
  const notifier = systemdNotifier(env, log);
  // Children (--run) must not talk to systemd in our name.
  delete env.NOTIFY_SOCKET;
  if (notifier) {
    await notifier.ready(`serving ${p.addresses.length} listener(s)`);
    p.onStop(() => void notifier.stopping());
  }
  if (o.exitWithParent) {
    watchParent((parent) => p.shutdown(`parent process ${parent} exited (--exit-with-parent)`, 0));
  }
  if (o.run) {
    const first = p.addresses[0];
    if (!first) throw new Error('--run needs a listener');
    const vars = captiveEnv(first, p.defaultExport);
    log.info({ cmd: o.run, uri: vars.uri }, 'captive mode: running command');
    const child = runCaptive(o.run, vars, env, os.constants.signals);
    // If we are told to stop first, do not leave CMD talking to a dead server.
    process.once('exit', () => child.kill('SIGTERM'));
    void child.status.then((status) => p.shutdown(`--run command exited with status ${status}`, status));
  }
}
