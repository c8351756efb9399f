/**
 * Test helper for the modern-client tier (test/modern/, docs/modern-clients.md): run
 * today's NBD clients (libnbd 1.22, qemu 10.0, nbd 3.26 from Debian trixie) out of the
 * cached root that scripts/modern-root.sh builds, through scripts/modern-run.sh
 * (a read-only chroot in a private mount namespace, same network namespace: 127.0.0.1
 * and Unix sockets under /tmp reach a cownbd on the host).
 *
 *   const ok = requireModernTool('nbdinfo');        // skip locally / fail under CI=true
 *   const r = await modern('nbdinfo', ['--json', uri]);
 *
 * Paths given to a modern tool must be under /tmp (or $TMPDIR): the chroot sees those
 * at the same paths, nothing else of the host (makeTempDir() puts fixtures there).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { mustSucceed, runTool, serverLog, type RunOptions, type ToolResult } from './clients.js';
import { REPO_ROOT } from './server.js';
import { gate } from './tools.js';

/**
 * Whether the server under test negotiates NBD_OPT_EXTENDED_HEADERS (issue 27). Every
 * assertion about extended headers reads this one constant, so the tier states what it
 * expects in one place; with `false` the same tests check the fallback to structured
 * replies instead. Tests that depend on it name it in their titles ("[ext]").
 */
export const EXTENDED_HEADERS_EXPECTED = true;

/** The suite scripts/modern-root.sh built (COWNBD_MODERN_SUITE, default trixie) and where. */
export const MODERN_SUITE = process.env.COWNBD_MODERN_SUITE ?? 'trixie';
export const MODERN_ROOT = process.env.COWNBD_MODERN_ROOT ?? `/var/cache/cownbd/${MODERN_SUITE}-root`;
const RUNNER = path.join(REPO_ROOT, 'scripts', 'modern-run.sh');
/** Written last by scripts/modern-root.sh: without it the root is absent or half-built. */
const STAMP = path.join(MODERN_ROOT, '.cownbd-root-stamp');

function inRoot(tool: string): boolean {
  return ['usr/bin', 'usr/sbin', 'bin', 'sbin'].some((d) => existsSync(path.join(MODERN_ROOT, d, tool)));
}

/** True when the modern root is built and holds `tool`; skip locally, throw under CI=true. */
export function requireModernTool(...tools: string[]): boolean {
  if (!gate(`modern root ${MODERN_ROOT} (build it: sudo bash scripts/modern-root.sh)`, existsSync(STAMP))) return false;
  return tools.every((t) => gate(`${t} in the modern root ${MODERN_ROOT}`, inRoot(t)));
}

/** Run `tool args…` from the modern root (hard timeout, full transcript as runTool). */
export function modern(tool: string, args: string[], opts: RunOptions = {}): Promise<ToolResult> {
  // Bind the directory os.tmpdir() names when it is not /tmp (modern-run.sh binds $TMPDIR).
  const env = { COWNBD_MODERN_ROOT: MODERN_ROOT, TMPDIR: tmpdir(), ...opts.env };
  return runTool('bash', [RUNNER, tool, ...args], { ...opts, env });
}

/**
 * Start a long-running tool from the root (a reference server such as qemu-nbd). The PID is
 * the tool's own (modern-run.sh execs through), so kill() ends it and its mount namespace.
 */
export function startModern(tool: string, args: string[]): { proc: ChildProcess; output(): string; stop(): Promise<void> } {
  const proc = spawn('bash', [RUNNER, tool, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, COWNBD_MODERN_ROOT: MODERN_ROOT, TMPDIR: tmpdir() },
  });
  let out = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const kill = () => proc.kill('SIGKILL');
  process.once('exit', kill);
  return {
    proc,
    output: () => out,
    async stop() {
      process.off('exit', kill);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}

/** The server's warnings and errors (e.g. why it closed a connection), for assertion messages. */
export function serverComplaints(srv: { stderr(): string }): string {
  const lines = serverLog(srv).filter((l) => Number(l.level) >= 40);
  return `\n--- cownbd warnings ---\n${lines.map((l) => `${String(l.msg)}: ${String(l.reason ?? '')}`).join('\n')}`;
}

/** modern() that throws with the transcript unless the tool exits 0. */
export async function modernOk(tool: string, args: string[], opts?: RunOptions): Promise<ToolResult> {
  return mustSucceed(await modern(tool, args, opts));
}

/** `nbdinfo --json` as libnbd 1.22 prints it (adds "extended" and can_block_status_payload). */
export interface ModernNbdinfoDoc {
  protocol: string;
  TLS: boolean;
  structured: boolean;
  extended: boolean;
  exports: Array<Record<string, unknown> & { 'export-name': string; 'export-size': number; contexts?: string[] }>;
}

export async function modernNbdinfoJson(uri: string, extra: string[] = [], opts?: RunOptions): Promise<ModernNbdinfoDoc> {
  const r = await modernOk('nbdinfo', ['--json', ...extra, uri], opts);
  return JSON.parse(r.stdout) as ModernNbdinfoDoc;
}

/** The packet style nbdinfo's first line names ("using extended packets" / "using structured packets"). */
export const EXPECTED_PACKETS = EXTENDED_HEADERS_EXPECTED ? 'extended' : 'structured';
