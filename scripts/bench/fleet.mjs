// Fleet benchmark (scripts/bench.sh fleet; issue 22, docs/fleet.md "Benchmark"): against a
// real S3 server (s3rver in its own process, with the conditional writes docs/fleet.md
// requires: s3rver-child.mjs --conditional), the base published once as s3://bench/base:
//
//   write cost    fio seqwrite-1m-qd8 / randwrite-4k-qd32 on `serve --base s3://… --overlay-dir`
//                 (no shipping) vs the same with --overlay-store --ship interval=BENCH_FLEET_INTERVAL
//                 (default 2s: several ships inside each BENCH_SECONDS cell; a list, e.g. 2s,600s,
//                 gives a cell each; 600s: only the dirty marking, no ship inside the cell)
//   FLUSH latency 4 KiB write + FLUSH, BENCH_FLEET_FLUSHES times (python3-libnbd): --ship on-flush
//                 (FLUSH = ship to the store) vs no shipping (FLUSH = the overlay's fdatasync), and
//                 a bare os.fdatasync of a 4 KiB write to a local file; median and p99
//   takeover      BENCH_FLEET_TAKEOVERS rounds: server A (on-flush, lease TTL BENCH_FLEET_TTL,
//                 default 2 s) serves a machine that wrote and FLUSHed 1 MiB; A is killed with
//                 SIGKILL; a client connects to server B at once: kill → B answers its GO
//   first read    B's first 64 KiB read after the takeover, of shipped data (offset 0) and of
//                 base data (offset 64 MiB), each over B's empty chunk cache, vs the same reads
//                 on a fresh `serve --base s3://…` with an empty cache (a cold base read)
//
// BENCH_FLEET_PARTS (writes,flush,takeover) picks parts. Indicative numbers only: one machine, s3rver on loopback. Results: .bench/results-fleet.json.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { freePort, runMeasured } from './proc.mjs';
import { ROWS, runRow } from './rows.mjs';

const env = process.env;
const base = env.BENCH_BASE;
const seconds = Number(env.BENCH_SECONDS ?? 8);
const ramp = Number(env.BENCH_RAMP ?? 1);
const sizeBytes = Number(env.BENCH_SIZE_MIB ?? 1024) * 2 ** 20;
const intervals = (env.BENCH_FLEET_INTERVAL ?? '2s').split(/[\s,]+/).filter(Boolean);
const parts = (env.BENCH_FLEET_PARTS ?? 'writes,flush,takeover').split(/[\s,]+/);
const ttl = Number(env.BENCH_FLEET_TTL ?? 2);
const flushes = Number(env.BENCH_FLEET_FLUSHES ?? 50);
const takeovers = Number(env.BENCH_FLEET_TAKEOVERS ?? 3);
const rounds = Number(env.BENCH_ROUNDS ?? 3);
const node = env.NODE24 || process.execPath;
const cli = env.COWNBD_CLI;
const runDir = mkdtempSync(join(env.BENCH_DIR, 'run.fleet.'));
Object.assign(process.env, { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true' });
// python3-libnbd is Debian's /usr/bin/python3 module (a python3 earlier in PATH may lack it).
const PY = spawnSync('/usr/bin/python3', ['-c', 'import nbd']).status === 0 ? '/usr/bin/python3' : 'python3';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let n = 0;

async function startS3() {
  const dir = join(runDir, 's3');
  mkdirSync(dir);
  const child = spawn(node, [new URL('./s3rver-child.mjs', import.meta.url).pathname, dir, 'bench', '--conditional'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      const m = /port (\d+)/.exec(String(d));
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`s3rver exited (${code})`)));
  });
  return { endpoint: `http://127.0.0.1:${port}`, stop: () => child.kill('SIGTERM') };
}

/**
 * `cownbd serve --base s3://bench/base --overlay-dir D EXTRA…` with its own empty cache, in its
 * own process group. Ready when it accepts TCP (an NBD probe would attach a fleet machine).
 */
async function serve(s3, extra) {
  const dir = join(runDir, `srv-${++n}`);
  mkdirSync(dir);
  const port = await freePort();
  const argv = [cli, 'serve', '--base', 's3://bench/base', '--overlay-dir', join(dir, 'ov'), '--create-dirs', '--s3-endpoint', s3.endpoint, '--cache-dir', join(dir, 'cache'), '-b', '127.0.0.1', '-p', String(port), ...extra];
  const out = openSync(join(dir, 'log'), 'a');
  const child = spawn(node, argv, { stdio: ['ignore', out, out], detached: true });
  closeSync(out);
  const up = () => new Promise((r) => connect(port, '127.0.0.1').once('connect', function () { this.destroy(); r(true); }).once('error', () => r(false)));
  for (let i = 0; !(await up()); i++) {
    if (i > 300 || child.exitCode !== null) throw new Error(`server did not start (see ${join(dir, 'log')})`);
    await sleep(50);
  }
  const stop = async (signal = 'SIGTERM') => {
    try {
      process.kill(-child.pid, signal);
    } catch {}
    // Until it exited (a fleet server ships what is left first): a server still shipping
    // in the background would slow the next cell down.
    for (let i = 0; i < 1200 && child.exitCode === null && child.signalCode === null; i++) await sleep(50);
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  };
  return { uri: (name) => `nbd://127.0.0.1:${port}/${name}`, stop };
}

// One python3-libnbd client program; the mode is its first argument; it prints JSON (ms).
const CLIENT = String.raw`
import json, os, sys, time
mode = sys.argv[1]
def ms(t): return round((time.monotonic() - t) * 1000, 2)
if mode == 'fsync':
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600); lat = []
    for i in range(int(sys.argv[3])):
        os.pwrite(fd, os.urandom(4096), (i % 256) * 4096); t = time.monotonic(); os.fdatasync(fd); lat.append(ms(t))
    print(json.dumps(lat)); sys.exit(0)
import nbd
h = nbd.NBD(); t = time.monotonic(); h.connect_uri(sys.argv[2]); connect = ms(t)
if mode == 'flush':
    lat = []
    for i in range(int(sys.argv[3])):
        h.pwrite(os.urandom(4096), (i % 256) * 4096); t = time.monotonic(); h.flush(); lat.append(ms(t))
    print(json.dumps(lat))
elif mode == 'write-and-hold':
    h.pwrite(os.urandom(1 << 20), 0); h.flush(); print('ready', flush=True); time.sleep(3600)
elif mode == 'first-reads':
    out = {'connect': connect}
    for off in sys.argv[3:]:
        t = time.monotonic(); h.pread(65536, int(off)); out[off] = ms(t)
    print(json.dumps(out))
`;
/** Run the client to completion; its last line, parsed. */
function py(args) {
  const r = spawnSync(PY, ['-c', CLIENT, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`client ${args[0]} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const median = (xs) => pct(xs, 50);
const results = { settings: { rounds, seconds, sizeMiB: sizeBytes / 2 ** 20, intervals, ttlS: ttl, flushes, takeovers }, writes: [], flush: {}, takeover: [], coldBase: [] };
const say = (s) => console.error(`bench-fleet: ${s}`);

const s3 = await startS3();
try {
  const m = runMeasured([node, cli, 'publish', base, 's3://bench/base', '--json', '-q', '--s3-endpoint', s3.endpoint]);
  if (m.rc !== 0) throw new Error(`publish failed: ${m.stderr}`);
  say(`published ${sizeBytes / 2 ** 20} MiB in ${m.wall.toFixed(1)} s`);

  // Write cost of interval shipping: fresh server, fresh machine prefix per cell; rounds
  // interleaved (the machine is shared: its load drifts), each cell the median over rounds.
  for (const name of parts.includes('writes') ? ['seqwrite-1m-qd8', 'randwrite-4k-qd32'] : []) {
    const row = ROWS.find((r) => r.name === name);
    const cells = [['no shipping', () => []], ...intervals.map((i) => [`interval=${i}`, () => ['--overlay-store', `s3://bench/fleet-w${n}`, '--ship', `interval=${i}`]])];
    const values = new Map(cells.map(([label]) => [label, []]));
    for (let round = 0; round < rounds; round++) {
      for (const [label, extra] of cells) {
        const srv = await serve(s3, extra());
        try {
          const r = runRow(row, srv.uri('vm'), { seconds, ramp, dir: runDir, sizeBytes, log: '' });
          values.get(label).push(r.value);
          say(`${name.padEnd(18)} ${label.padEnd(14)} round ${round} ${r.value.toFixed(row.unit === 'IOPS' ? 0 : 1).padStart(9)} ${row.unit}`);
        } finally {
          await srv.stop();
        }
      }
    }
    const none = median(values.get('no shipping'));
    for (const [label, vs] of values) {
      results.writes.push({ row: name, label, median: median(vs), values: vs, unit: row.unit, ratioToNoShipping: median(vs) / none });
      say(`${name.padEnd(18)} ${label.padEnd(14)} median ${median(vs).toFixed(1)} ${row.unit} (${((100 * median(vs)) / none).toFixed(0)}% of no shipping)`);
    }
  }

  // FLUSH latency.
  const flushRow = async (label, extra) => {
    const srv = await serve(s3, extra);
    try {
      const lat = py(['flush', srv.uri('vm'), String(flushes)]);
      results.flush[label] = { medianMs: median(lat), p99Ms: pct(lat, 99) };
    } finally {
      await srv.stop();
    }
  };
  if (parts.includes('flush')) {
    await flushRow('on-flush', ['--overlay-store', 's3://bench/fleet-flush', '--ship', 'on-flush']);
    await flushRow('no shipping (overlay fdatasync)', []);
    const lat = py(['fsync', join(runDir, 'fsync.dat'), String(flushes)]);
    results.flush['bare fdatasync'] = { medianMs: median(lat), p99Ms: pct(lat, 99) };
  }
  for (const [k, v] of Object.entries(results.flush)) say(`FLUSH ${k.padEnd(32)} median ${v.medianMs} ms, p99 ${v.p99Ms} ms`);

  // Takeover after kill -9, and the first reads on the new owner.
  const offsets = ['0', String(64 * 2 ** 20)];
  for (let round = 0; parts.includes('takeover') && round < takeovers; round++) {
    const fleet = ['--overlay-store', 's3://bench/fleet-t', '--ship', 'on-flush', '--lease-ttl', String(ttl)];
    const a = await serve(s3, fleet);
    const b = await serve(s3, fleet);
    const machine = `vm${round}`;
    try {
      const writer = spawn(PY, ['-c', CLIENT, 'write-and-hold', a.uri(machine)], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise((resolve, reject) => {
        writer.stdout.on('data', (d) => String(d).includes('ready') && resolve());
        writer.once('exit', (code) => reject(new Error(`writer exited (${code})`)));
      });
      await sleep(Math.random() * (ttl * 1000) / 3); // anywhere in the owner's renewal period
      await a.stop('SIGKILL');
      const killed = performance.now();
      writer.kill('SIGKILL');
      const r = py(['first-reads', b.uri(machine), ...offsets]);
      // Python's keys: the offsets (their reads follow the GO) and 'connect'.
      const servedMs = performance.now() - killed - offsets.reduce((x, o) => x + r[o], 0);
      results.takeover.push({ servedMs, firstReadShippedMs: r['0'], firstReadBaseMs: r[offsets[1]] });
      say(`takeover ${round}: kill → served ${Math.round(servedMs)} ms (W = ${Math.ceil((ttl * 1000 * 1.01) / 0.99 + ttl * 100)} ms); first read: shipped ${r['0']} ms, base ${r[offsets[1]]} ms`);
    } finally {
      await a.stop('SIGKILL');
      await b.stop();
    }
    // A cold object-store base read: a fresh server, empty cache, the same offsets.
    const c = await serve(s3, []);
    try {
      const r = py(['first-reads', c.uri('vm'), ...offsets]);
      results.coldBase.push({ offset0Ms: r['0'], offset64MiBMs: r[offsets[1]] });
      say(`cold base read ${round}: offset 0 ${r['0']} ms, offset 64 MiB ${r[offsets[1]]} ms`);
    } finally {
      await c.stop();
    }
  }
} finally {
  s3.stop();
  await sleep(500);
  rmSync(join(runDir, 's3'), { recursive: true, force: true });
}
writeFileSync(join(env.BENCH_DIR, 'results-fleet.json'), `${JSON.stringify(results, null, 2)}\n`);
console.log(JSON.stringify(results, null, 2));
