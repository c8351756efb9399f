// The throughput benchmark (scripts/bench.sh). For each round, row and target: a fresh
// server with a fresh empty overlay, one client run, server CPU sampled from /proc around
// it. Rounds are interleaved (round 1 of every row and target, then round 2, …) so slow
// drifts of a shared machine hit every target alike; each cell is the median over rounds.
//
//   node run.mjs  (configured by environment, see scripts/bench.sh --help)
//
// BENCH_MODE=modern (scripts/bench.sh modern): the same cells with today's clients and peers
// from the trixie root, plus a protocol probe per target first (scripts/bench/modern.mjs).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, copyFileSync, existsSync, readdirSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { cpuSeconds, freePort } from './proc.mjs';
import { ROWS, runRow } from './rows.mjs';
import { OURS, PEERS, isOurs, processesOf, scales, startTarget, startTargets } from './targets.mjs';
import { printReport } from './report.mjs';
import { TLS_ROWS, isTls, makeServerCertificate } from './tls.mjs';
import { MODERN_ROWS, MODERN_TARGETS, clientVersions, modernRunDir, probeProtocol, protocolNotes, viaRoot } from './modern.mjs';

import { benchDir, env, ramp, rounds, seconds, sizeBytes, split } from './settings.mjs';
// BENCH_MODE=modern (scripts/bench.sh modern): clients and peers from the trixie root.
const modern = env.BENCH_MODE === 'modern';
const targets = split(env.BENCH_TARGETS).length ? split(env.BENCH_TARGETS) : modern ? MODERN_TARGETS : [...OURS, ...PEERS];
const rowNames = split(env.BENCH_ROWS);
// BENCH_ROWS names prefixes; the modern mode's default list names rows exactly.
const rows = rowNames.length
  ? ROWS.filter((r) => rowNames.some((n) => r.name.startsWith(n)))
  : modern ? ROWS.filter((r) => MODERN_ROWS.includes(r.name)) : ROWS;
if (rows.length === 0) throw new Error(`BENCH_ROWS=${env.BENCH_ROWS} matches no row (rows: ${ROWS.map((r) => r.name).join(', ')})`);

// The modern mode's tools see only /tmp of the host: its run directory (and base) live there.
const { runDir, base } = modern ? modernRunDir(env.BENCH_BASE) : { runDir: mkdtempSync(join(benchDir, 'run.')), base: env.BENCH_BASE };
const client = modern ? viaRoot : undefined;
const ctx = {
  base,
  cli: env.COWNBD_CLI,
  node: env.NODE24 || process.execPath,
  serveArgs: split(env.COWNBD_SERVE_ARGS),
  addcowCluster: env.BENCH_ADDCOW_CLUSTER || '4K',
  tlsDir: () => makeServerCertificate(join(runDir, 'tls')),
  rawCopy() {
    const p = join(runDir, 'raw.img');
    if (!existsSync(p)) copyFileSync(base, p);
    return p;
  },
};

/**
 * Level ground before every cell. `sync` first: the previous cell may have left gigabytes of
 * dirty overlay data whose writeback would throttle this cell's writes (seen: a round-2
 * randrw cell at a sixth of its round-1 value, right after the nbdcopy → file cells). Then
 * read the base once, so every target starts with it in the page cache: this VM runs DAMON
 * proactive reclaim (pageout of cold pages), which otherwise evicts parts of the base
 * between cells and turns random-read rows into disk benchmarks at random.
 */
function warmBase() {
  spawnSync('sync');
  const buf = Buffer.allocUnsafe(4 * 2 ** 20);
  for (const file of [base, join(runDir, 'raw.img')]) {
    if (!existsSync(file)) continue;
    const fd = openSync(file, 'r');
    try {
      while (readSync(fd, buf, 0, buf.length, null) > 0);
    } finally {
      closeSync(fd);
    }
  }
}

async function cell(target, row, round) {
  const dir = join(runDir, `${target}.${row.name}.r${round}`);
  mkdirSync(dir);
  warmBase();
  const log = join(dir, 'log');
  const servers = await startTargets(target, ctx, dir, row.clients ?? 1, log);
  const serverCpu = () => servers.pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
  try {
    const cpu0 = serverCpu();
    const r = runRow(row, servers.uris, { seconds, ramp, dir, sizeBytes, log, client });
    await new Promise((res) => setTimeout(res, 100)); // let forked children be reaped
    const serverCpuPct = (100 * (serverCpu() - cpu0)) / r.wall;
    // CPU-seconds per GiB moved: the server's CPU share over the client's throughput (both
    // taken over the same window, fio's ramp included), the machine-independent figure.
    const cpuSecPerGiB = serverCpuPct / 100 / (r.bytesPerSec / 2 ** 30);
    return { ...r, serverCpuPct, cpuSecPerGiB };
  } finally {
    await servers.stop();
    // Overlays of up to a few GiB per cell: keep only the logs.
    for (const f of readdirSync(dir)) if (f !== 'log' && !f.endsWith('.json')) rmSync(join(dir, f), { recursive: true, force: true });
  }
}

const cells = []; // { target, row, round, ok, value, serverCpuPct, clientCpuPct, reason }
const stop = () => process.exit(130);
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
const protocols = modern ? await probeAll() : undefined; // { target: { extended, structured } }
const notes = modern ? protocolNotes(clientVersions(), protocols) : [];
for (const n of notes) console.error(`bench: ${n}`);

/** Modern mode: start each target once and ask what the root's libnbd negotiates with it. */
async function probeAll() {
  const probes = {};
  for (const target of targets) {
    const dir = join(runDir, `${target}.probe`);
    mkdirSync(dir);
    try {
      const server = await startTarget(target, ctx, dir, await freePort(), join(dir, 'log'));
      try {
        probes[target] = probeProtocol(server.uri);
      } finally {
        await server.stop();
      }
    } catch (err) {
      probes[target] = { extended: null, structured: null, error: err.message };
    }
    for (const f of readdirSync(dir)) if (f !== 'log') rmSync(join(dir, f), { force: true });
  }
  return probes;
}
console.error(`bench: ${targets.length} targets × ${rows.length} rows × ${rounds} rounds, ${seconds}s per cell (+${ramp}s ramp), run dir ${runDir}`);
for (let round = 1; round <= rounds; round++) {
  for (const row of rows) {
    for (const target of targets) {
      if (isTls(target) && !TLS_ROWS.includes(row.name)) continue; // not measured over TLS
      if ((row.clients ?? 1) > 1 && !scales(target)) continue; // one image per process
      if ((row.clients ?? 1) === 1 && processesOf(target)) continue; // scaling rows only
      const label = `round ${round} ${row.name.padEnd(22)} ${target.padEnd(16)}`;
      try {
        const r = await cell(target, row, round);
        const { value, serverCpuPct, clientCpuPct, cpuSecPerGiB, latMeanUs, latP99Us } = r;
        cells.push({ target, row: row.name, round, ok: true, value, serverCpuPct, clientCpuPct, cpuSecPerGiB, latMeanUs, latP99Us });
        const lat = latMeanUs === undefined ? '' : `  lat mean ${latMeanUs.toFixed(1)} µs p99 ${latP99Us.toFixed(1)} µs`;
        console.error(`bench: ${label} ${value.toFixed(row.unit === 'IOPS' ? 0 : 1)} ${row.unit}  server ${serverCpuPct.toFixed(0)}% client ${clientCpuPct.toFixed(0)}%  ${cpuSecPerGiB.toFixed(2)} CPU-s/GiB${lat}`);
      } catch (err) {
        cells.push({ target, row: row.name, round, ok: false, reason: err.message });
        console.error(`bench: ${label} FAIL: ${err.message}`);
      }
    }
  }
}
rmSync(join(runDir, 'raw.img'), { force: true });
if (modern) rmSync(base, { force: true }); // the link (or copy) in /tmp, never the base itself

const out = join(benchDir, modern ? 'results-modern.json' : 'results.json');
const meta = { mode: modern ? 'modern' : 'throughput', seconds, ramp, rounds, baseSizeMiB: sizeBytes / 2 ** 20, runDir, notes, protocols };
const report = printReport({ cells, rows, targets, isOurs, meta });
writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
console.log(`\nresults: ${out}`);
