/**
 * Test helper: start the real `cownbd serve` CLI (built dist/cli/main.js) as a child
 * process, wait for its "cownbd: listening on <uri>" line(s), and stop it reliably.
 *
 *   const srv = await startServer([img]);              // TCP, -p 0 (ephemeral port)
 *   const srv = await startServer([img], { unix: true }); // Unix socket in a temp dir
 *   srv.uri()        → nbd://127.0.0.1:PORT/   (or nbd+unix:///?socket=PATH)
 *   srv.uri('disk')  → same, export "disk"
 *   await srv.stop() → exit code (SIGTERM by default; SIGKILL after a grace period)
 *
 * Every started server is also killed in an afterAll-independent process 'exit' hook,
 * so a failing test never leaks a server. Also provides runNbdPython(): run a python3
 * script with the libnbd bindings (the system python, which has python3-libnbd).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requirePython } from './tools.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI_PATH = path.join(REPO_ROOT, 'dist', 'cli', 'main.js');

export interface StartServerOptions {
  /** Listen on a Unix socket in a fresh temp dir instead of TCP (-p 0). */
  unix?: boolean;
  /** Extra environment variables for the server process. */
  env?: Record<string, string>;
  /** How long to wait for the listening line (ms). Default 20 s. */
  timeoutMs?: number;
  /** Number of "listening on" lines to wait for (default 1). */
  listeners?: number;
  /** Run the server under this command line (e.g. unshare …), which must exec its arguments. */
  wrap?: string[];
  /** Do not add --create-dirs for --overlay-dir/--ephemeral-dir/--config (the default adds it). */
  strictDirs?: boolean;
}

export interface RunningServer {
  /** NBD URI for export `name` (default ""). */
  uri(name?: string): string;
  /** Every URI the server printed. */
  readonly uris: string[];
  readonly port?: number;
  readonly socketPath?: string;
  readonly proc: ChildProcess;
  /** Everything the server wrote to stderr so far (JSON log lines). */
  stderr(): string;
  /** Everything the server wrote to stdout so far. */
  stdout(): string;
  /** Send `signal` (default SIGTERM), wait for exit (SIGKILL after 10 s); returns the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export function assertBuilt(): void {
  if (!existsSync(CLI_PATH)) {
    throw new Error(`${CLI_PATH} is missing: run \`npm run build\` first (scripts/test.sh does this)`);
  }
}

export async function startServer(args: string[], opts: StartServerOptions = {}): Promise<RunningServer> {
  assertBuilt();
  let sockDir: string | undefined;
  let socketPath: string | undefined;
  const listenArgs: string[] = [];
  if (opts.unix) {
    sockDir = mkdtempSync(path.join(tmpdir(), 'cownbd-sock-'));
    socketPath = path.join(sockDir, 'nbd.sock');
    listenArgs.push('-U', socketPath);
  } else {
    listenArgs.push('-p', '0');
  }
  // Tests name fresh temporary directories for overlays: let serve create them (without
  // --create-dirs a missing directory is refused; test/server/overlay-dirs.test.ts checks that).
  const dirs = args.some((a) => ['--overlay-dir', '--ephemeral-dir', '--config', '-c'].includes(a)) && !args.includes('--create-dirs') && !opts.strictDirs;
  const argv = [process.execPath, CLI_PATH, 'serve', ...args, ...(dirs ? ['--create-dirs'] : []), ...listenArgs];
  const [cmd, ...cmdArgs] = [...(opts.wrap ?? []), ...argv];
  const proc = spawn(cmd!, cmdArgs, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  live.add(proc);
  let out = '';
  let err = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  void exited.then(() => {
    live.delete(proc);
    if (sockDir) rmSync(sockDir, { recursive: true, force: true });
  });

  const want = opts.listeners ?? 1;
  const uris: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`server did not start within ${opts.timeoutMs ?? 20000} ms\nstdout: ${out}\nstderr: ${err}`));
    }, opts.timeoutMs ?? 20_000);
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      // "cownbd: listening on URI", or a bare URI line with --print-uri.
      for (const m of out.matchAll(/^(?:cownbd: listening on )?(nbds?(?:\+unix)?:\/\/\S*)$/gm)) {
        if (!uris.includes(m[1]!)) uris.push(m[1]!);
      }
      if (uris.length >= want) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (code ${code}) before listening\nstdout: ${out}\nstderr: ${err}`));
    });
  });

  const first = uris[0]!;
  let port: number | undefined;
  const tcp = /^nbds?:\/\/127\.0\.0\.1:(\d+)\//.exec(first) ?? /^nbds?:\/\/[^/]*:(\d+)\//.exec(first);
  if (tcp) port = Number(tcp[1]);

  return {
    uris,
    port,
    socketPath,
    proc,
    stderr: () => err,
    stdout: () => out,
    uri(name = '') {
      if (socketPath) return `nbd+unix:///${encodeURIComponent(name)}?socket=${socketPath}`;
      return `nbd://127.0.0.1:${port}/${encodeURIComponent(name)}`;
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.kill(signal);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** A python3 interpreter that can `import nbd` (the system one; pyenv shims usually cannot). */
export function findNbdPython(): string | undefined {
  for (const py of ['/usr/bin/python3', 'python3']) {
    const r = spawnSync(py, ['-c', 'import nbd'], { stdio: 'ignore' });
    if (r.status === 0) return py;
  }
  return undefined;
}

/** Gate for tests needing python3-libnbd: true if usable (skip/fail rules of tools.ts otherwise). */
export function requireNbdPython(): boolean {
  return findNbdPython() !== undefined || requirePython('nbd');
}

export interface PyResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run a python3-libnbd script (async, so the event loop keeps running). The script gets
 * `URI` (and any `vars`) as globals, injected as JSON.
 */
export function runNbdPython(script: string, vars: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<PyResult> {
  const py = findNbdPython();
  if (!py) throw new Error('no python3 with the nbd module (install python3-libnbd)');
  const prelude = Object.entries(vars)
    .map(([k, v]) => `${k} = __import__('json').loads(${JSON.stringify(JSON.stringify(v))})`)
    .join('\n');
  return new Promise((resolve) => {
    const proc = spawn(py, ['-c', `${prelude}\n${script}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** Like runNbdPython but throws (with the script's stderr) unless it exits 0; returns stdout. */
export async function nbdPython(script: string, vars: Record<string, unknown> = {}, timeoutMs?: number): Promise<string> {
  const r = await runNbdPython(script, vars, timeoutMs);
  if (r.status !== 0) throw new Error(`python script failed (status ${r.status}):\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}
