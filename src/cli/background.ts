/**
 * `serve --background`: qemu-nbd --fork's readiness for scripts. The command starts the
 * real server as a detached child and returns only once that child is listening (its
 * pidfile written, every export open), printing the child's listening lines; if the child
 * fails to start, the command fails with the child's status and its one-line error
 * (stderr is shared). So `cownbd serve --background … && ci-mount.sh attach …` cannot race.
 *
 * The child is this same command line with COWNBD_BACKGROUND_CHILD set; it reports
 * readiness over an IPC channel (never over stdout, whose reader may be a `$(…)`), then
 * drops the channel. Its stdout is a pipe the parent drains until ready; later writes to
 * it are ignored once the parent has gone.
 */
import { spawn } from 'node:child_process';

const CHILD_MARK = 'COWNBD_BACKGROUND_CHILD';

/** True in the detached child of `serve --background`. */
export function isBackgroundChild(env: NodeJS.ProcessEnv): boolean {
  return env[CHILD_MARK] === '1';
}

/**
 * In the parent: start the child and resolve with the exit status the command should
 * end with (0 once the child is ready, the child's status if it died first).
 */
export function startInBackground(argv: readonly string[], execArgv: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn(process.execPath, [...execArgv, ...argv.slice(1)], {
    detached: true,
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    env: { ...env, [CHILD_MARK]: '1' },
  });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  return new Promise((resolve) => {
    child.once('message', (m) => {
      if (m !== 'ready') return;
      process.stdout.write(out);
      process.stdout.write(`cownbd: running in the background as pid ${child.pid}\n`);
      child.stdout!.destroy();
      child.disconnect();
      child.unref();
      resolve(0);
    });
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

/** In the child, once listening: tell the parent, then stand alone. */
export function reportReady(): void {
  // The parent stops reading our stdout once we are ready: a later write must not kill us.
  process.stdout.on('error', () => {});
  process.send?.('ready');
  process.disconnect?.();
}
