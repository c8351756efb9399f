/**
 * Captive mode (`serve --run 'CMD'`, as nbdkit's --run): once the server listens, run CMD
 * with /bin/sh, tell it where the server is through its environment, stop the server when
 * CMD exits and exit with CMD's status. The natural shape for CI:
 *
 *   cownbd serve --ephemeral golden.img -p 0 --run 'qemu-img convert -O raw "$uri" out.img'
 *
 * Variables (nbdkit's names): $uri (NBD URI of the default export), $nbd (the same, in
 * qemu's legacy "nbd:HOST:PORT:exportname=NAME" / "nbd:unix:PATH:exportname=NAME" form),
 * $port and $unixsocket (whichever applies; the other is empty), $exportname.
 * A wildcard bind (0.0.0.0, ::) is reached over loopback, the one address sure to work
 * from the same machine.
 */
import { spawn } from 'node:child_process';
import type { ListenAddress } from '../server/listener.js';

export interface CaptiveEnv {
  uri: string;
  nbd: string;
  port: string;
  unixsocket: string;
  exportname: string;
}

/** The environment CMD gets for the first listener `addr` and export `exportName`. */
export function captiveEnv(addr: ListenAddress, exportName: string): CaptiveEnv {
  const name = encodeURIComponent(exportName);
  if (addr.path) {
    return {
      uri: `nbd+unix:///${name}?socket=${addr.path}`,
      nbd: `nbd:unix:${addr.path}${exportName ? `:exportname=${exportName}` : ''}`,
      port: '',
      unixsocket: addr.path,
      exportname: exportName,
    };
  }
  const host = loopbackFor(addr.host ?? '127.0.0.1');
  const uriHost = host.includes(':') ? `[${host}]` : host;
  return {
    uri: `nbd://${uriHost}:${addr.port}/${name}`,
    nbd: `nbd:${host}:${addr.port}${exportName ? `:exportname=${exportName}` : ''}`,
    port: String(addr.port),
    unixsocket: '',
    exportname: exportName,
  };
}

function loopbackFor(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::' || host === '::0') return '::1';
  return host;
}

/** Exit status of a finished child, shell style: its code, or 128 + signal number. */
export function shellStatus(code: number | null, signal: NodeJS.Signals | null, signalNumbers: Record<string, number>): number {
  if (code !== null) return code;
  return 128 + (signal ? (signalNumbers[signal] ?? 0) : 0);
}

/**
 * Run `command` under /bin/sh with `vars` added to `baseEnv`, stdio inherited. Resolves
 * with its shell-style exit status. `kill()` forwards a signal (used when cownbd itself is
 * told to stop, so CMD does not outlive the server it talks to).
 */
export function runCaptive(
  command: string,
  vars: CaptiveEnv,
  baseEnv: NodeJS.ProcessEnv,
  signalNumbers: Record<string, number>,
): { status: Promise<number>; kill: (signal: NodeJS.Signals) => void } {
  const child = spawn('/bin/sh', ['-c', command], { stdio: 'inherit', env: { ...baseEnv, ...vars } });
  const status = new Promise<number>((resolve) => {
    child.once('error', () => resolve(127));
    child.once('exit', (code, signal) => resolve(shellStatus(code, signal, signalNumbers)));
  });
  return {
    status,
    kill: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}
