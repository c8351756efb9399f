// Server configurations the benchmark compares. Each start() serves a FRESH, EMPTY overlay
// over the same base (so reads go to the base and writes are first writes), in its own
// process group so stop() ends the server and anything it forked.
//
//   cownbd-cow         cownbd serve --base BASE --overlay-dir DIR (export "vm" → DIR/vm.cow)
//   cownbd-addcow[-C]  cownbd serving an add-cow overlay, cluster size C (default 4K)
//   cownbd-raw         cownbd serving a copy of the base (raw: no overlay), reference only
//   nbdkit-cow64k      nbdkit --filter=cow file, cow-block-size=64K (nbdkit's default)
//   nbdkit-cow4k       same with cow-block-size=4K
//   nbdkit-file        nbdkit file plugin on the raw copy, reference only
//   qemu-threads       qemu-nbd on a qcow2 overlay (qemu-img create -b BASE), --aio=threads
//   qemu-uring         same with --aio=io_uring
//   nbd-server-cow     nbd-server with copyonwrite = true (a diff file per connection)
//   <target>-tls       cownbd-* and nbdkit-* targets with --tls require (scripts/bench/tls.mjs)
//
// Scaling rows (N clients, one machine each) use startTargets(): cownbd-cow is ONE process
// serving N per-machine overlays (exports vm0 … vmN-1 of its --overlay-dir); a peer runs N
// processes, one fresh overlay each (nbdkit's cow filter has one overlay per process, so
// that is its way to serve N machines). Targets that serve one image per process by
// design (cownbd-addcow, the references, TLS targets) are not measured there.
//   cownbd-cow-pN      scaling rows only, a measured stand-in for N worker processes: N
//                      cownbd-cow processes, machine i served by process i mod N (what a
//                      multi-process design with per-machine ownership would give, minus the
//                      socket handoff; docs/performance.md)
//   trixie-<peer>      a peer (nbdkit-*, qemu-*) run from the cached trixie root, i.e. nbdkit
//                      1.42 / qemu-nbd 10 (scripts/bench/modern.mjs; paths must be under /tmp)
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isTls, plainTarget, tlsServerArgs, tlsUri } from './tls.mjs';
import { freePort } from './proc.mjs';
import { viaRoot } from './modern.mjs';

export const PEERS = ['nbdkit-cow64k', 'nbdkit-cow4k', 'qemu-threads', 'qemu-uring', 'nbd-server-cow', 'nbdkit-cow64k-tls'];
export const OURS = ['cownbd-cow', 'cownbd-addcow', 'cownbd-cow-tls'];
export const REFERENCE = ['cownbd-raw', 'nbdkit-file'];
export const isOurs = (t) => t.startsWith('cownbd-');
/** Targets measured on the scaling rows (see above). */
export const SCALES = ['cownbd-cow', 'nbdkit-cow64k', 'nbdkit-cow4k', 'qemu-threads', 'qemu-uring', 'nbd-server-cow'];
/** cownbd-cow-pN: N processes (scaling rows only); the process count, or undefined. */
export const processesOf = (t) => Number(/^cownbd-cow-p(\d+)$/.exec(t)?.[1]) || undefined;
export const scales = (t) => SCALES.includes(t) || processesOf(t) !== undefined;

function run(argv, log) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  writeFileSync(log, `$ ${argv.join(' ')}\n${r.stdout ?? ''}${r.stderr ?? ''}`, { flag: 'a' });
  if (r.status !== 0) throw new Error(`${argv.slice(0, 3).join(' ')} failed: ${(r.stderr || r.stdout || '').trim().split('\n').pop()}`);
}

/** Command line (and export name) for one target, TLS added for "-tls" targets. */
function prepare(target, ctx, dir, port, log) {
  const trixie = /^trixie-((?:nbdkit|qemu)-.+)$/.exec(target);
  // TMPDIR: nbdkit's cow filter keeps its overlay in a temporary file, by default in
  // /var/tmp, which is read-only in the root; the cell's directory is under /tmp (shared).
  if (trixie) return prepare(trixie[1], { ...ctx, tool: (argv) => viaRoot(['env', `TMPDIR=${dir}`, ...argv]) }, dir, port, log);
  if (!isTls(target)) return preparePlain(target, ctx, dir, port, log);
  const spec = preparePlain(plainTarget(target), ctx, dir, port, log);
  const kind = spec.argv[0] === 'nbdkit' ? 'nbdkit' : target.startsWith('cownbd-') ? 'cownbd' : undefined;
  if (!kind) throw new Error(`${target}: TLS is set up for cownbd and nbdkit targets only`);
  const tls = tlsServerArgs(kind, ctx.tlsDir());
  // nbdkit options go before the plugin name; cownbd's anywhere.
  const argv = kind === 'nbdkit' ? [spec.argv[0], spec.argv[1], ...tls, ...spec.argv.slice(2)] : [...spec.argv, ...tls];
  return { ...spec, argv, tls: true };
}

/** Command line (and export name) for one target; prepares its fresh overlay in dir. */
function preparePlain(target, ctx, dir, port, log) {
  const { base, cli, node, rawCopy } = ctx;
  // The peers' own tools (nbdkit, qemu-img, qemu-nbd, nbd-server): the host's, or wrapped.
  const tool = ctx.tool ?? ((argv) => argv);
  const addr = ['-i', '127.0.0.1', '-p', String(port)];
  if (target === 'cownbd-cow') {
    return { argv: [node, cli, 'serve', '--base', base, '--overlay-dir', dir, '--create-dirs', '-p', String(port), ...ctx.serveArgs], name: 'vm' };
  }
  const addcow = /^cownbd-addcow(?:-(\w+))?$/.exec(target);
  if (addcow) {
    const ov = join(dir, 'vm.add-cow');
    const cluster = addcow[1] ?? ctx.addcowCluster;
    run([node, cli, 'create', '-f', 'add-cow', ov, '--backing', base, '--image', join(dir, 'vm.img'), '--cluster-size', cluster], log);
    return { argv: [node, cli, 'serve', ov, '-p', String(port), ...ctx.serveArgs], name: '' };
  }
  if (target === 'cownbd-raw') return { argv: [node, cli, 'serve', '-f', 'raw', rawCopy(), '-p', String(port), ...ctx.serveArgs], name: '' };
  if (target === 'nbdkit-file') return { argv: tool(['nbdkit', '-f', ...addr, 'file', `file=${rawCopy()}`]), name: '' };
  const kit = /^nbdkit-cow(64k|4k)$/.exec(target);
  if (kit) {
    const block = kit[1] === '4k' ? 4096 : 65536;
    return { argv: tool(['nbdkit', '-f', ...addr, '--filter=cow', 'file', `file=${base}`, `cow-block-size=${block}`]), name: '' };
  }
  const qemu = /^qemu-(threads|uring)$/.exec(target);
  if (qemu) {
    const ov = join(dir, 'vm.qcow2');
    run(tool(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', ov]), log);
    const aio = qemu[1] === 'uring' ? 'io_uring' : 'threads';
    return { argv: tool(['qemu-nbd', '-t', '--shared=16', '-f', 'qcow2', `--aio=${aio}`, '-b', '127.0.0.1', '-p', String(port), ov]), name: '' };
  }
  if (target === 'nbd-server-cow') {
    // nbd-server forks into the background (its -d mode serves one client and exits), so
    // we follow it through its pid file.
    const conf = join(dir, 'nbd-server.conf');
    writeFileSync(
      conf,
      `[generic]\nport = ${port}\nlistenaddr = 127.0.0.1\n[vm]\nexportname = ${base}\ncopyonwrite = true\ncowdir = ${dir}\n`,
    );
    return { argv: ['nbd-server', '-C', conf, '-p', join(dir, 'nbd-server.pid')], name: 'vm', daemon: join(dir, 'nbd-server.pid') };
  }
  throw new Error(`unknown target ${target}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Start a target on a free port with a fresh overlay in `dir`. Resolves to
 * { pid, uri, stop() } once the server answers NBD (nbdinfo --size).
 */
export async function startTarget(target, ctx, dir, port, log) {
  const spec = prepare(target, ctx, dir, port, log);
  writeFileSync(log, `$ ${spec.argv.join(' ')}\n`, { flag: 'a' });
  const out = openSync(log, 'a');
  const child = spawn(spec.argv[0], spec.argv.slice(1), { stdio: ['ignore', out, out], detached: true });
  closeSync(out);
  let exited = false;
  child.on('exit', () => (exited = true));
  const uri = spec.tls ? tlsUri(port, spec.name) : `nbd://127.0.0.1:${port}/${spec.name}`;
  let pid = child.pid;
  const stop = async () => {
    for (const p of new Set([pid, child.pid])) {
      try {
        process.kill(p === child.pid ? -p : p, 'SIGTERM');
      } catch {}
    }
    for (let i = 0; i < 100 && alive(pid); i++) await sleep(50);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
    if (spec.daemon) rmSync(spec.daemon, { force: true });
  };
  for (let i = 0; i < 150; i++) {
    if (spec.daemon && existsSync(spec.daemon)) pid = Number(readFileSync(spec.daemon, 'utf8').trim()) || pid;
    if (exited && !spec.daemon) throw new Error(`server exited at startup (see ${log})`);
    const daemonKnown = !spec.daemon || pid !== child.pid;
    if (daemonKnown && spawnSync('nbdinfo', ['--size', uri]).status === 0) return { pid, uri, stop };
    await sleep(100);
  }
  await stop();
  throw new Error(`server did not answer on ${uri} within 15 s (see ${log})`);
}

/**
 * `clients` machines on one target (see the header): resolves to { pids, uris, stop() },
 * one URI per client; the pids are every server process whose CPU counts.
 */
export async function startTargets(target, ctx, dir, clients, log) {
  const procs = processesOf(target);
  if (procs) return startProcesses(ctx, dir, clients, procs, log);
  if (clients === 1 || target === 'cownbd-cow') {
    const s = await startTarget(target, ctx, dir, await freePort(), log);
    const uris = clients === 1 ? [s.uri] : Array.from({ length: clients }, (_, i) => s.uri.replace(/\/vm$/, `/vm${i}`));
    return { pids: [s.pid], uris, stop: s.stop };
  }
  if (!SCALES.includes(target)) throw new Error(`${target} is not measured with ${clients} clients`);
  const servers = [];
  const stop = () => Promise.all(servers.map((s) => s.stop()));
  try {
    for (let i = 0; i < clients; i++) {
      const sub = join(dir, `m${i}`);
      mkdirSync(sub);
      servers.push(await startTarget(target, ctx, sub, await freePort(), log));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { pids: servers.map((s) => s.pid), uris: servers.map((s) => s.uri), stop };
}

/** cownbd-cow-pN: `procs` cownbd-cow processes; client i uses export vm<i> of process i mod procs. */
async function startProcesses(ctx, dir, clients, procs, log) {
  const servers = [];
  const stop = () => Promise.all(servers.map((s) => s.stop()));
  try {
    for (let p = 0; p < procs; p++) {
      const sub = join(dir, `p${p}`);
      mkdirSync(sub);
      servers.push(await startTarget('cownbd-cow', ctx, sub, await freePort(), log));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const uris = Array.from({ length: clients }, (_, i) => servers[i % procs].uri.replace(/\/vm$/, `/vm${i}`));
  return { pids: servers.map((s) => s.pid), uris, stop };
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
