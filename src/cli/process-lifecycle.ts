/**
 * Process-level chores of a long-running `serve`/`demo`, each small and opt-in:
 *
 *   writePidfile(file)        --pidfile: written (temp name + rename) once listening,
 *                             removed again at exit, so its existence means "ready"
 *   watchParent(onGone)       --exit-with-parent: poll getppid(); when it changes the
 *                             parent died and we were re-parented (to init or a
 *                             subreaper). Polling needs no prctl(PR_SET_PDEATHSIG), which
 *                             Node cannot call, and works the same in containers.
 *   notifySystemd(state)      Type=notify: sd_notify over $NOTIFY_SOCKET. The socket is a
 *                             Unix *datagram* socket, which Node's core cannot send to, so
 *                             the message goes through systemd's own `systemd-notify`
 *                             binary (the unit sets NotifyAccess=all: the sender is our
 *                             child, not the main pid). Without NOTIFY_SOCKET: no-op.
 *
 * Nothing here is read at import time; the caller passes env and options in.
 */
import { execFile } from 'node:child_process';
import { renameSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../logging.js';

/** Write our pid to `file` atomically; returns a function that removes it (idempotent). */
export function writePidfile(file: string, pid = process.pid): () => void {
  const abs = path.resolve(file);
  const tmp = `${abs}.${pid}.tmp`;
  try {
    writeFileSync(tmp, `${pid}\n`, { mode: 0o644 });
    renameSync(tmp, abs);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = e.code === 'ENOENT' ? ' (does its directory exist?)' : e.code === 'EISDIR' ? ' (it is a directory; give a file name)' : '';
    throw Object.assign(new Error(`--pidfile ${abs}: cannot write: ${e.message}${hint}`), { code: e.code });
  }
  let removed = false;
  const remove = () => {
    if (removed) return;
    removed = true;
    try {
      unlinkSync(abs);
    } catch {
      // Already gone (an operator removed it): nothing to do.
    }
  };
  process.once('exit', remove);
  return remove;
}

/**
 * Call `onGone` once when our parent process dies. The timer is unref'd: it never keeps
 * the process alive by itself. Returns a function that stops watching.
 */
export function watchParent(onGone: (oldParent: number) => void, intervalMs = 500): () => void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent) {
      clearInterval(timer);
      onGone(parent);
    }
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

export interface SystemdNotifier {
  /** READY=1 with a STATUS= line (the URIs). */
  ready(status: string): Promise<void>;
  /** STOPPING=1: systemd then shows "deactivating" while we drain. */
  stopping(): Promise<void>;
}

/** A notifier for $NOTIFY_SOCKET, or undefined when not started by systemd as Type=notify. */
export function systemdNotifier(env: NodeJS.ProcessEnv, log: Logger): SystemdNotifier | undefined {
  const socket = env.NOTIFY_SOCKET;
  if (!socket) return undefined;
  const send = (args: string[]) =>
    new Promise<void>((resolve) => {
      // systemd-notify reads NOTIFY_SOCKET itself; it waits (BARRIER) until systemd has read
      // the message, so the sender's exit cannot race the service manager's lookup.
      execFile('systemd-notify', args, { env: { ...env, NOTIFY_SOCKET: socket }, timeout: 10_000 }, (err, _out, stderr) => {
        if (err) log.warn({ err: err.message, stderr: String(stderr).trim(), notifySocket: socket }, 'sd_notify via systemd-notify failed (is systemd installed?)');
        resolve();
      });
    });
  return {
    ready: (status) => send(['--ready', `--status=${status}`]),
    stopping: () => send(['STOPPING=1']),
  };
}
