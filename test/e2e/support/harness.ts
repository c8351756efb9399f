/**
 * End-to-end harness: builds the guest assets with scripts/e2e/*.sh (cached under
 * $E2E_CACHE), boots guests under QEMU/UML, and runs shell tools, all asynchronously and
 * each bounded by a timeout. Async matters: the cownbd server under test is a child process
 * whose stdout/stderr pipes must keep draining while a guest boots.
 *
 * The guest protocol (see scripts/e2e/golden-image.sh): the per-boot script goes in on the
 * kernel command line; the console shows "E2E-BEGIN", the script's output, "E2E-END rc=N".
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../../helpers/server.js';

export const E2E_SCRIPTS = path.join(REPO_ROOT, 'scripts', 'e2e');
export const CI_MOUNT = path.join(REPO_ROOT, 'scripts', 'ci-mount.sh');

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run a command to completion (never rejects); SIGKILL after timeoutMs. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const proc = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      // Own process group, so a timeout kills helpers the command forked (QEMU, UML, qsd).
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n[harness] ${cmd} killed after ${opts.timeoutMs} ms\n`;
      try {
        process.kill(-proc.pid!, 'SIGKILL');
      } catch {
        proc.kill('SIGKILL');
      }
    }, opts.timeoutMs ?? 120_000);
    proc.once('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: `${stderr}\n${err.message}`, ms: Date.now() - started });
    });
    proc.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** Like run() but throws (with both streams) unless the command exits 0. */
export async function mustRun(cmd: string, args: string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
  return r;
}

/** Parse KEY=VALUE lines printed by the scripts/e2e builders. */
function parseVars(text: string): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) vars[m[1]!] = m[2]!;
  }
  return vars;
}

export interface GuestAssets {
  golden: string;
  vmlinuz: string;
  initrd: string;
  kver: string;
}

/** Build or reuse the golden image (always) and the QEMU kernel + initramfs (when `qemu`). */
export async function prepareAssets(opts: { qemu: boolean }): Promise<GuestAssets> {
  const golden = parseVars((await mustRun('bash', [path.join(E2E_SCRIPTS, 'golden-image.sh')], { timeoutMs: 120_000 })).stdout);
  let vars: Record<string, string> = {};
  if (opts.qemu) {
    vars = parseVars((await mustRun('bash', [path.join(E2E_SCRIPTS, 'kernel.sh')], { timeoutMs: 300_000 })).stdout);
    Object.assign(vars, parseVars((await mustRun('bash', [path.join(E2E_SCRIPTS, 'initramfs.sh')], { timeoutMs: 120_000 })).stdout));
  }
  return { golden: golden.GOLDEN!, vmlinuz: vars.VMLINUZ ?? '', initrd: vars.INITRD ?? '', kver: vars.KVER ?? '' };
}

/** A private scratch dir; the golden image is COPIED in (tests never serve the cache's file). */
export async function makeWorkDir(prefix: string): Promise<string> {
  return mkdtemp(path.join(process.env.E2E_TMPDIR ?? tmpdir(), `cownbd-${prefix}-`));
}

export async function copyGolden(assets: GuestAssets, dir: string): Promise<string> {
  const dest = path.join(dir, 'golden.img');
  await copyFile(assets.golden, dest);
  return dest;
}

export async function removeDir(dir: string | undefined): Promise<void> {
  if (dir && process.env.E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
}

export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (d) => h.update(d))
      .once('error', reject)
      .once('end', () => resolve(h.digest('hex')));
  });
}

export interface BootResult {
  /** Exit status of the guest script (from "E2E-END rc=N"); 124 timeout, 125 no marker. */
  code: number | null;
  /** The script's output: the console lines between E2E-BEGIN and E2E-END. */
  output: string[];
  console: string;
  ms: number;
}

function guestOutput(consoleText: string): string[] {
  // Markers are matched anywhere in a line: a kernel message can share a console line.
  const lines = consoleText.split('\n');
  const begin = lines.findIndex((l) => l.includes('E2E-BEGIN'));
  const end = lines.findIndex((l, i) => i > begin && l.includes('E2E-END rc='));
  if (begin < 0 || end < begin) return [];
  return lines.slice(begin + 1, end);
}

async function boot(scriptName: string, target: string, guestScript: string, dir: string, timeoutS: number): Promise<BootResult> {
  const scriptFile = path.join(dir, `guest-${Date.now()}-${Math.random().toString(36).slice(2)}.sh`);
  await writeFile(scriptFile, guestScript);
  try {
    const r = await run('bash', [path.join(E2E_SCRIPTS, scriptName), '-t', String(timeoutS), target, scriptFile], {
      timeoutMs: (timeoutS + 30) * 1000,
    });
    return { code: r.code, output: guestOutput(r.stdout), console: `${r.stdout}\n--- stderr ---\n${r.stderr}`, ms: r.ms };
  } finally {
    await rm(scriptFile, { force: true });
  }
}

/** Boot QEMU (TCG) with root on the NBD export `uri` and run `guestScript` in the guest. */
export function bootQemu(uri: string, guestScript: string, dir: string, timeoutS = 120): Promise<BootResult> {
  return boot('boot-qemu.sh', uri, guestScript, dir, timeoutS);
}

/** Boot UML with `ubd0=<ubd>` (COW[,BACKING]) as root and run `guestScript` in the guest. */
export function bootUml(ubd: string, guestScript: string, dir: string, timeoutS = 60): Promise<BootResult> {
  return boot('boot-uml.sh', ubd, guestScript, dir, timeoutS);
}

/** Timing log, printed at the end of each file so CI output shows where the time goes. */
export class Timings {
  private readonly rows: string[] = [];
  add(label: string, ms: number): void {
    this.rows.push(`${label.padEnd(44)} ${(ms / 1000).toFixed(1).padStart(6)} s`);
  }
  print(title: string): void {
    if (this.rows.length) console.log(`\n[e2e timings] ${title}\n${this.rows.join('\n')}\n`);
  }
}
