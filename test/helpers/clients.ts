/**
 * Test helper: run the REAL NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh, fio,
 * nbd-client) against a server, each with a hard timeout, capturing stdout/stderr.
 *
 * Why async spawn (not spawnSync): the server under test may run in the same event loop
 * in future tests, and a hung client must be killed rather than hang the suite. Every
 * wrapper returns the full ToolResult so a failing assertion can print what the client
 * said; `mustSucceed()` turns a non-zero exit into an Error carrying the command line,
 * the exit status and both streams.
 *
 * `serveImage()` starts cownbd on one image (the product under test). Setting
 * COWNBD_INTEROP_TARGET=qemu-nbd runs the same single-export tests against qemu-nbd
 * instead: that is how the client invocations and the assertions themselves were
 * validated against a reference server (a test that fails there is a bad test).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CLI_PATH, findNbdPython, startServer } from './server.js';

export interface ToolResult {
  command: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  durationMs: number;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: Record<string, string>;
  cwd?: string;
}

const DEFAULT_TIMEOUT_MS = 60_000;

function shellQuote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

/** Run `cmd args…`, never longer than timeoutMs (then SIGKILL); resolves with everything it printed. */
export function runTool(cmd: string, args: string[], opts: RunOptions = {}): Promise<ToolResult> {
  const command = [cmd, ...args].map(shellQuote).join(' ');
  const started = Date.now();
  return new Promise((resolve, reject) => {
    let proc: ChildProcess;
    try {
      proc = spawn(cmd, args, {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...opts.env },
        cwd: opts.cwd,
      });
    } catch (err) {
      reject(err as Error);
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill('SIGKILL');
    }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ command, code, signal, stdout, stderr, timedOut, durationMs: Date.now() - started });
    });
  });
}

/** A readable account of a tool run, for assertion messages. */
export function describeResult(r: ToolResult): string {
  const status = r.timedOut ? 'TIMED OUT (killed)' : r.signal ? `signal ${r.signal}` : `exit ${r.code}`;
  return `$ ${r.command}\n→ ${status} after ${r.durationMs} ms\n--- stdout ---\n${r.stdout.slice(-4000)}\n--- stderr ---\n${r.stderr.slice(-4000)}`;
}

/** Throw (with the whole transcript) unless the tool exited 0. */
export function mustSucceed(r: ToolResult): ToolResult {
  if (r.code !== 0 || r.timedOut) throw new Error(`client command failed:\n${describeResult(r)}`);
  return r;
}

// ---------------------------------------------------------------- qemu tools

export function qemuImg(args: string[], opts?: RunOptions): Promise<ToolResult> {
  return runTool('qemu-img', args, opts);
}

/**
 * qemu-io on an NBD URI (format forced to raw: probing over NBD is pointless and noisy).
 * Returns the result plus how many "Pattern verification failed" lines qemu-io printed.
 */
export async function qemuIo(
  uri: string,
  commands: string[],
  opts: RunOptions & { readOnly?: boolean } = {},
): Promise<ToolResult & { patternFailures: number }> {
  const args = opts.readOnly ? ['-r', '-f', 'raw'] : ['-f', 'raw'];
  for (const c of commands) args.push('-c', c);
  args.push(uri);
  const r = await runTool('qemu-io', args, opts);
  const patternFailures = (r.stdout + r.stderr).match(/Pattern verification failed/g)?.length ?? 0;
  return { ...r, patternFailures };
}

export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export async function qemuImgMap(uri: string, opts?: RunOptions): Promise<QemuMapEntry[]> {
  const r = mustSucceed(await qemuImg(['map', '--output=json', '-f', 'raw', uri], opts));
  return JSON.parse(r.stdout) as QemuMapEntry[];
}

// ---------------------------------------------------------------- libnbd tools

export function nbdinfo(args: string[], opts?: RunOptions): Promise<ToolResult> {
  return runTool('nbdinfo', args, opts);
}

/** One export as `nbdinfo --json` (libnbd 1.14) prints it. */
export interface NbdinfoExport {
  'export-name': string;
  description?: string;
  'export-size': number;
  contexts?: string[];
  is_read_only: boolean;
  is_rotational: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
  [key: string]: unknown;
}

export interface NbdinfoDoc {
  protocol: string;
  TLS: boolean;
  structured: boolean;
  exports: NbdinfoExport[];
}

export async function nbdinfoJson(uri: string, extra: string[] = [], opts?: RunOptions): Promise<NbdinfoDoc> {
  const r = mustSucceed(await nbdinfo(['--json', ...extra, uri], opts));
  return JSON.parse(r.stdout) as NbdinfoDoc;
}

export interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

/** `nbdinfo --map[=context] --json`. */
export async function nbdinfoMap(uri: string, context?: string, opts?: RunOptions): Promise<MapEntry[]> {
  const r = mustSucceed(await nbdinfo([context ? `--map=${context}` : '--map', '--json', uri], opts));
  return JSON.parse(r.stdout) as MapEntry[];
}

export function nbdcopy(args: string[], opts?: RunOptions): Promise<ToolResult> {
  return runTool('nbdcopy', args, opts);
}

/**
 * nbdsh -u URI -c SCRIPT (the libnbd handle is `h`). nbdsh runs `python3` from PATH, which
 * may be a pyenv shim without the nbd module: put the interpreter that has it first.
 */
export function nbdsh(uri: string, script: string, opts: RunOptions = {}): Promise<ToolResult> {
  const py = findNbdPython();
  const env = { ...opts.env };
  if (py && path.isAbsolute(py)) env.PATH = `${path.dirname(py)}:${process.env.PATH ?? ''}`;
  return runTool('nbdsh', ['-u', uri, '-c', script], { ...opts, env });
}

// ---------------------------------------------------------------- fio

export interface FioJobResult {
  error: number;
  readBytes: number;
  writeBytes: number;
  raw: Record<string, unknown>;
}

/**
 * fio with the libnbd engine. `job` holds plain fio options (name=value, without "--");
 * the JSON report goes to a temp file because the nbd engine prints a banner on stdout.
 */
export async function fioNbd(
  uri: string,
  job: Record<string, string | number>,
  opts: RunOptions = {},
): Promise<ToolResult & { jobs: FioJobResult[] }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cownbd-fio-'));
  try {
    const out = path.join(dir, 'fio.json');
    const args = ['--ioengine=nbd', `--uri=${uri}`, '--output-format=json', `--output=${out}`];
    for (const [k, v] of Object.entries(job)) args.push(`--${k}=${v}`);
    // fio writes verify state files into cwd: keep them in the temp dir.
    const r = await runTool('fio', args, { ...opts, cwd: dir });
    let jobs: FioJobResult[] = [];
    try {
      const text = readFileSync(out, 'utf8');
      const doc = JSON.parse(text.slice(text.indexOf('{'))) as { jobs: Array<Record<string, unknown>> };
      jobs = doc.jobs.map((j) => ({
        error: j.error as number,
        readBytes: (j.read as { io_bytes: number }).io_bytes,
        writeBytes: (j.write as { io_bytes: number }).io_bytes,
        raw: j,
      }));
    } catch {
      // No report: the caller's exit-code assertion shows the transcript.
    }
    return { ...r, jobs };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- nbd-client

/**
 * `nbd-client -l HOST PORT` (or `-l -u SOCKET`): nbd-client 3.24 prints "Negotiation: .."
 * then one line per export, "name" or "name: description".
 */
export async function nbdClientList(
  target: { host: string; port: number } | { socket: string },
  opts?: RunOptions,
): Promise<ToolResult & { exports: Array<{ name: string; description?: string }> }> {
  const args = 'socket' in target ? ['-l', '-u', target.socket] : ['-l', target.host, String(target.port)];
  const r = await runTool('nbd-client', args, opts);
  const exports = r.stdout
    .split('\n')
    .filter((l) => l.length > 0 && !l.startsWith('Negotiation'))
    .map((l) => {
      const i = l.indexOf(': ');
      return i < 0 ? { name: l } : { name: l.slice(0, i), description: l.slice(i + 2) };
    });
  return { ...r, exports };
}

// ---------------------------------------------------------------- overlays

export type OverlayFormat = 'cow' | 'add-cow';

/**
 * Create an overlay over the raw `base` with the standard tools: uml_mkcow for UML cow
 * (the tool users have), `cownbd create -f add-cow` for add-cow (dist must be built).
 * Returns the path to serve; for add-cow also the data-image path.
 */
export function makeOverlay(format: OverlayFormat, base: string, dir: string): { image: string; data: string } {
  if (format === 'cow') {
    const image = path.join(dir, 'overlay.cow');
    execFileSync('uml_mkcow', [image, base], { stdio: 'pipe' });
    return { image, data: image };
  }
  const image = path.join(dir, 'overlay.add-cow');
  const data = path.join(dir, 'overlay.img');
  execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'add-cow', '--image', data, '-b', base, '-F', 'raw', image], { stdio: 'pipe' });
  return { image, data };
}

// ---------------------------------------------------------------- servers

export interface ServeOptions {
  name?: string;
  description?: string;
  readOnly?: boolean;
  unix?: boolean;
  /** Extra cownbd arguments (ignored by the reference target). */
  extraArgs?: string[];
}

export interface Target {
  /** NBD URI of the served export. */
  uri: string;
  /** 'cownbd' or the reference server name. */
  kind: string;
  host?: string;
  port?: number;
  socketPath?: string;
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * cownbd's pino log lines (JSON, one per line on stderr) as objects. With `--log-level trace`
 * the server logs every option ({option, length, msg:'option'}) and every request
 * ({cmd, flags, offset, length, msg:'request'}): tests use them to prove a client really
 * sent what it is supposed to replay. Non-JSON lines are skipped.
 */
export function serverLog(target: Pick<Target, 'stderr'>): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const line of target.stderr().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a partial last line: ignore
    }
  }
  return out;
}

/** Which server the interop tests talk to: cownbd unless COWNBD_INTEROP_TARGET says otherwise. */
export const TARGET = process.env.COWNBD_INTEROP_TARGET ?? 'cownbd';

export async function serveImage(image: string, o: ServeOptions = {}): Promise<Target> {
  if (TARGET === 'qemu-nbd') return serveWithQemuNbd(image, o);
  const args = [image];
  if (o.name !== undefined) args.push('-n', o.name);
  if (o.description !== undefined) args.push('--description', o.description);
  if (o.readOnly) args.push('-r');
  args.push(...(o.extraArgs ?? []));
  const srv = await startServer(args, { unix: o.unix });
  return {
    uri: srv.uri(o.name ?? ''),
    kind: 'cownbd',
    host: srv.port !== undefined ? '127.0.0.1' : undefined,
    port: srv.port,
    socketPath: srv.socketPath,
    stderr: () => srv.stderr(),
    stop: (s) => srv.stop(s),
  };
}

/** Reference target for validating the tests themselves (Unix socket: qemu-nbd has no -p 0). */
async function serveWithQemuNbd(image: string, o: ServeOptions): Promise<Target> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cownbd-ref-'));
  const sock = path.join(dir, 'nbd.sock');
  const args = ['-t', '-k', sock, '-f', 'raw', '-A', '--shared=16', '--discard=unmap', '--cache=writeback'];
  args.push('-x', o.name ?? '');
  if (o.description !== undefined) args.push('-D', o.description);
  if (o.readOnly) args.push('-r');
  args.push(image);
  const proc = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  const deadline = Date.now() + 10_000;
  for (;;) {
    const probe = await runTool('nbdinfo', ['--size', `nbd+unix:///${encodeURIComponent(o.name ?? '')}?socket=${sock}`], { timeoutMs: 5000 });
    if (probe.code === 0) break;
    if (Date.now() > deadline || proc.exitCode !== null) {
      proc.kill('SIGKILL');
      throw new Error(`qemu-nbd did not start: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    uri: `nbd+unix:///${encodeURIComponent(o.name ?? '')}?socket=${sock}`,
    kind: 'qemu-nbd',
    socketPath: sock,
    stderr: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const code = await exited;
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}
