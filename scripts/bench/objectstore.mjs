// Object-store benchmark (scripts/bench.sh objectstore): the same 1 GiB base served
//   local    cownbd serve --base BASE.img --overlay-dir D
//   s3-cold  cownbd serve --base s3://bench/base-CS --overlay-dir D, empty --cache-dir
//   s3-warm  the same server after a whole-disk copy filled (and verified) its cache
// against a real S3 server (s3rver, its own process), plus `cownbd publish` of the base
// for each chunk size in BENCH_S3_CHUNKS (default 1M). Server CPU of cownbd and of s3rver
// are sampled from /proc over each measurement, side by side.
// Rows (BENCH_ROWS prefixes select): seqread-1m-qd8 and randread-4k-qd32 (fio, BENCH_SECONDS each: cold, they read
// only the start of the disk), nbdcopy-null (ONE whole-disk copy: cold, every chunk once).
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpuSeconds, freePort, runMeasured } from './proc.mjs';
import { ROWS, runRow } from './rows.mjs';
import { startTarget } from './targets.mjs';

const env = process.env;
const base = env.BENCH_BASE;
const seconds = Number(env.BENCH_SECONDS ?? 8);
const ramp = Number(env.BENCH_RAMP ?? 1);
const sizeBytes = Number(env.BENCH_SIZE_MIB ?? 1024) * 2 ** 20;
const chunkSizes = (env.BENCH_S3_CHUNKS ?? '1M').split(/[\s,]+/).filter(Boolean);
const node = env.NODE24 || process.execPath;
const cli = env.COWNBD_CLI;
const runDir = mkdtempSync(join(env.BENCH_DIR, 'run.s3.'));
// s3rver's fixed credentials, through the AWS default chain (environment), for every child.
Object.assign(process.env, { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1' });
const s3env = process.env;
const wanted = (env.BENCH_ROWS ?? '').split(/[\s,]+/).filter(Boolean);
const rows = ['seqread-1m-qd8', 'randread-4k-qd32', 'nbdcopy-null']
  .filter((n) => wanted.length === 0 || wanted.some((w) => n.startsWith(w)))
  .map((n) => ROWS.find((r) => r.name === n));

async function startS3() {
  const dir = join(runDir, 's3');
  mkdirSync(dir);
  const child = spawn(node, [new URL('./s3rver-child.mjs', import.meta.url).pathname, dir, 'bench'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      const m = /port (\d+)/.exec(String(d));
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`s3rver exited (${code})`)));
  });
  return { pid: child.pid, endpoint: `http://127.0.0.1:${port}`, stop: () => child.kill('SIGTERM') };
}

/** Serve `cownbd serve --base BASE --overlay-dir DIR EXTRA…` through bench/targets.mjs (export vm). */
async function serve(name, baseArg, extra, dir) {
  const ctx = { cli, node, serveArgs: extra, base: baseArg, rawCopy: () => base };
  mkdirSync(dir, { recursive: true });
  return startTarget('cownbd-cow', ctx, dir, await freePort(), join(dir, `${name}.log`));
}

async function measure(label, server, s3, row, secs) {
  const c0 = cpuSeconds(server.pid);
  const s0 = cpuSeconds(s3.pid);
  const r = runRow(row, server.uri, { seconds: secs, ramp: row.kind === 'fio' ? ramp : 0, dir: runDir, sizeBytes, log: '' });
  const serverCpu = (100 * (cpuSeconds(server.pid) - c0)) / r.wall;
  const s3Cpu = (100 * (cpuSeconds(s3.pid) - s0)) / r.wall;
  const line = { label, row: row.name, value: r.value, unit: row.unit, cownbdCpuPct: serverCpu, s3rverCpuPct: s3Cpu };
  console.error(`bench-s3: ${label.padEnd(14)} ${row.name.padEnd(18)} ${r.value.toFixed(row.unit === 'IOPS' ? 0 : 1).padStart(9)} ${row.unit.padEnd(6)} cownbd ${serverCpu.toFixed(0).padStart(3)}%  s3rver ${s3Cpu.toFixed(0).padStart(3)}%`);
  return line;
}

const results = { publish: [], reads: [] };
const s3 = await startS3();
try {
  for (const cs of chunkSizes) {
    const s0 = cpuSeconds(s3.pid);
    const m = runMeasured([node, cli, 'publish', base, `s3://bench/base-${cs}`, '--chunk-size', cs, '--json', '-q', '--s3-endpoint', s3.endpoint], { env: s3env });
    if (m.rc !== 0) throw new Error(`publish failed: ${m.stderr}`);
    const p = { chunkSize: cs, seconds: m.wall, mibPerSec: sizeBytes / 2 ** 20 / m.wall, publishCpuPct: (100 * m.cpu) / m.wall, s3rverCpuPct: (100 * (cpuSeconds(s3.pid) - s0)) / m.wall };
    results.publish.push(p);
    console.error(`bench-s3: publish ${sizeBytes / 2 ** 20} MiB, chunk ${cs}: ${p.seconds.toFixed(2)} s, ${p.mibPerSec.toFixed(0)} MiB/s (publish ${p.publishCpuPct.toFixed(0)}% CPU, s3rver ${p.s3rverCpuPct.toFixed(0)}%)`);
  }
  const s3args = (cache) => ['--s3-endpoint', s3.endpoint, '--cache-dir', cache];
  let n = 0;
  for (const row of rows) {
    const secs = row.kind === 'fio' ? seconds : 0;
    {
      const srv = await serve('local', base, [], join(runDir, `local-${++n}`));
      try {
        results.reads.push(await measure('local', srv, s3, row, secs));
      } finally {
        await srv.stop();
      }
    }
    for (const cs of chunkSizes) {
      const cache = join(runDir, `cache-${cs}-${++n}`);
      const srv = await serve('s3', `s3://bench/base-${cs}`, s3args(cache), join(runDir, `s3-${n}`));
      try {
        results.reads.push(await measure(`s3-cold ${cs}`, srv, s3, row, secs));
        // Fill the cache completely (whole-disk copy), then measure warm.
        runRow(ROWS.find((r) => r.name === 'nbdcopy-null'), srv.uri, { seconds: 0, ramp: 0, dir: runDir, sizeBytes, log: '' });
        results.reads.push(await measure(`s3-warm ${cs}`, srv, s3, row, secs));
      } finally {
        await srv.stop();
      }
      rmSync(cache, { recursive: true, force: true });
    }
  }
} finally {
  s3.stop();
  // The bucket holds a copy of the base per chunk size: keep only the logs.
  await new Promise((r) => setTimeout(r, 500));
  rmSync(join(runDir, 's3'), { recursive: true, force: true });
}
for (const r of results.reads.filter((x) => x.label === 'local')) {
  for (const w of results.reads.filter((x) => x.row === r.row && x.label.startsWith('s3-warm'))) w.ratioToLocal = w.value / r.value;
}
writeFileSync(join(env.BENCH_DIR, 'results-objectstore.json'), `${JSON.stringify(results, null, 2)}\n`);
console.log(JSON.stringify(results, null, 2));
