/**
 * The NBD servers the user journeys run against:
 *
 *   Journey 1 (VmServer: one export per VM, each a persistent overlay of one golden image)
 *     cownbd    `cownbd serve --base GOLDEN --overlay-dir DIR` (export NAME ⇒ DIR/NAME.cow)
 *     standin   qemu-storage-daemon serving qcow2 overlays (no UML step: not a UML cow)
 *
 *   Journey 2 (DiskServer: every CI job must see the pristine golden image)
 *     cownbd    `cownbd serve --ephemeral GOLDEN`: one server, a temp overlay per connection
 *     standin   `qemu-nbd --snapshot GOLDEN`, one per job
 *
 * E2E_SERVER=auto (default) | cownbd | standin. auto means cownbd when dist/ is built, else
 * (locally only, with a loud warning) the stand-in, which proves the harness, not cownbd.
 * Under CI=true auto never falls back to a stand-in.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { CLI_PATH, startServer, type RunningServer } from '../../helpers/server.js';
import { mustRun } from './harness.js';

export type ServerKind = 'cownbd' | 'standin';

/** Which server the journeys use (see the module comment). */
export function serverKind(journey: string): ServerKind {
  const v = process.env.E2E_SERVER ?? 'auto';
  if (v !== 'auto' && v !== 'cownbd' && v !== 'standin') {
    throw new Error(`E2E_SERVER must be auto, cownbd or standin (got "${v}")`);
  }
  if (v === 'standin') return 'standin';
  if (existsSync(CLI_PATH)) return 'cownbd';
  if (v === 'cownbd' || process.env.CI === 'true') {
    throw new Error(`${journey}: ${CLI_PATH} is missing (npm run build); E2E_SERVER=${v}${process.env.CI === 'true' ? ', CI=true' : ''} refuses a stand-in`);
  }
  console.warn(`\n*** e2e: ${journey} runs against a STAND-IN server, not cownbd: ${CLI_PATH} is not built ***\n`);
  return 'standin';
}

const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** Start a long-running stand-in process and wait until `ready()` holds. */
async function spawnDaemon(cmd: string, args: string[], ready: () => boolean, timeoutMs = 20_000): Promise<ChildProcess> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(proc);
  let err = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  proc.once('exit', () => children.delete(proc));
  const deadline = Date.now() + timeoutMs;
  while (!ready()) {
    if (proc.exitCode !== null) throw new Error(`${cmd} exited ${proc.exitCode}: ${err}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`${cmd} not ready after ${timeoutMs} ms: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return proc;
}

async function stopDaemon(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill(signal);
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Graceful stop of a cownbd server; a non-zero exit is a test failure. */
async function stopCownbd(srv: RunningServer): Promise<void> {
  const code = await srv.stop();
  if (code !== 0) throw new Error(`cownbd exited ${code} on SIGTERM\n${srv.stderr()}`);
}

// ---------------------------------------------------------------- Journey 1

export interface VmServer {
  readonly kind: ServerKind;
  /** NBD URI of the VM's root disk. */
  uri(vm: string): string;
  /** The UML cow file holding the VM's writes (cownbd only). */
  overlayPath(vm: string): string | undefined;
  /** The overlay files that exist now (cownbd only). */
  overlays(): Promise<string[]>;
  stop(): Promise<void>;
  /** SIGKILL the server: no graceful close, only what was flushed may survive. */
  crash(): Promise<void>;
  /** Server log, for failure messages. */
  log(): string;
}

export async function startVmServer(golden: string, dir: string, vms: string[]): Promise<VmServer> {
  const overlayDir = path.join(dir, 'overlays');
  await mkdir(overlayDir, { recursive: true });

  if (serverKind('journey 1') === 'cownbd') {
    const srv = await startServer(['--base', golden, '--overlay-dir', overlayDir]);
    return {
      kind: 'cownbd',
      uri: (vm) => srv.uri(vm),
      overlayPath: (vm) => path.join(overlayDir, `${vm}.cow`),
      overlays: async () => (await readdir(overlayDir)).sort(),
      stop: () => stopCownbd(srv),
      crash: async () => {
        await srv.stop('SIGKILL');
      },
      log: () => srv.stderr(),
    };
  }

  const sock = path.join(dir, 'standin.sock');
  const args: string[] = ['--nbd-server', `addr.type=unix,addr.path=${sock}`];
  for (const vm of vms) {
    const q = path.join(overlayDir, `${vm}.qcow2`);
    if (!existsSync(q)) await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', golden, '-F', 'raw', q]);
    args.push('--blockdev', `driver=qcow2,node-name=${vm},file.driver=file,file.filename=${q}`);
    args.push('--export', `type=nbd,id=e-${vm},node-name=${vm},name=${vm},writable=on`);
  }
  const proc = await spawnDaemon('qemu-storage-daemon', args, () => existsSync(sock));
  return {
    kind: 'standin',
    uri: (vm) => `nbd+unix:///${vm}?socket=${sock}`,
    overlayPath: () => undefined,
    overlays: async () => [],
    stop: () => stopDaemon(proc),
    crash: () => stopDaemon(proc, 'SIGKILL'),
    log: () => '',
  };
}

// ---------------------------------------------------------------- Journey 2

/** One CI job's view of the disk server. */
export interface DiskJob {
  readonly uri: string;
  /** The job has detached; releases whatever the job holds on the server side. */
  end(): Promise<void>;
}

export interface DiskServer {
  readonly kind: ServerKind;
  /** The per-connection overlay files that exist now (cownbd --ephemeral only). */
  overlayFiles?(): Promise<string[]>;
  /** Prepare for a new CI job (jobs may overlap) and return its URI. */
  beginJob(): Promise<DiskJob>;
  stop(): Promise<void>;
  log(): string;
}

export async function startDiskServer(golden: string, dir: string): Promise<DiskServer> {
  if (serverKind('journey 2') === 'cownbd') {
    // One server for every job: isolation must come from the per-connection overlay.
    const ephemeralDir = path.join(dir, 'ephemeral');
    const srv = await startServer(['--ephemeral', golden, '--ephemeral-dir', ephemeralDir]);
    return {
      kind: 'cownbd',
      overlayFiles: async () => (existsSync(ephemeralDir) ? readdir(ephemeralDir) : []),
      beginJob: async () => ({ uri: srv.uri(''), end: async () => {} }),
      stop: () => stopCownbd(srv),
      log: () => srv.stderr(),
    };
  }

  let job = 0;
  const open = new Set<DiskJob>();
  return {
    kind: 'standin',
    beginJob: async () => {
      const sock = path.join(dir, `standin${++job}.sock`);
      // --snapshot: writes go to a temp qcow2 overlay, dropped when qemu-nbd exits.
      const proc = await spawnDaemon(
        'qemu-nbd',
        ['-k', sock, '-x', 'disk', '-f', 'raw', '--snapshot', '--persistent', '--shared=4', golden],
        () => existsSync(sock),
      );
      const j: DiskJob = {
        uri: `nbd+unix:///disk?socket=${sock}`,
        end: async () => {
          if (open.delete(j)) await stopDaemon(proc);
        },
      };
      open.add(j);
      return j;
    },
    stop: async () => {
      for (const j of [...open]) await j.end();
    },
    log: () => '',
  };
}
