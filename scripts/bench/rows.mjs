// The benchmark rows: fio (ioengine=nbd, libnbd) for the block-I/O rows and nbdcopy for
// the copy rows. Each run() drives one server for about `seconds` and returns
// { value, bytesPerSec, clientCpuPct, wall } (client CPU in % of one core over the client's
// wall time; the caller measures the server over the same window and turns bytesPerSec and
// the server's CPU into CPU-seconds per GiB moved), plus for the QD1 rows the fio
// completion-latency mean and p99 in µs (latMeanUs, latP99Us).
//
// Scaling rows (`clients`: 8) run one fio job per machine, each on its own export URI (the
// target hands out one per client: cownbd-cow one process with 8 per-machine overlays,
// peers 8 processes), reported as the aggregate.
//
// `client` wraps each client command line (default: as is, the host's tools; the modern mode
// runs them from the trixie root, scripts/bench/modern.mjs), so both modes measure the very
// same rows.
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { runMeasured } from './proc.mjs';

const fio = (name, rw, bs, qd, extra = {}) => ({
  name, kind: 'fio', rw, bs, qd, jobs: extra.jobs ?? 1, mix: extra.mix, latency: extra.latency === true, clients: extra.clients ?? 1,
  unit: bs === '4k' ? 'IOPS' : 'MiB/s',
});
const copy = (name, dest, args) => ({ name, kind: 'nbdcopy', dest, args, unit: 'MiB/s' });

export const ROWS = [
  fio('randread-4k-qd32', 'randread', '4k', 32),
  // 4 connections (fio jobs) of QD8 each: the same 32 requests in flight, spread over sockets.
  fio('randread-4k-qd32-4conn', 'randread', '4k', 8, { jobs: 4 }),
  fio('seqread-1m-qd8', 'read', '1M', 8),
  fio('randrw-70-30-4k-qd32', 'randrw', '4k', 32, { mix: 70 }),
  fio('randwrite-4k-qd32', 'randwrite', '4k', 32),
  fio('seqwrite-1m-qd8', 'write', '1M', 8),
  // QD1: each request waits for the one before (a booting machine); latency is the figure.
  fio('randread-4k-qd1', 'randread', '4k', 1, { latency: true }),
  fio('randwrite-4k-qd1', 'randwrite', '4k', 1, { latency: true }),
  // Scaling: 8 machines, each its own overlay and connection (QD8 of 4k, QD2 of 1M each).
  fio('scale8-randwrite-4k-qd8', 'randwrite', '4k', 8, { clients: 8 }),
  fio('scale8-seqwrite-1m-qd2', 'write', '1M', 2, { clients: 8 }),
  copy('nbdcopy-null', 'null:', ['--connections=2', '--requests=64', '--request-size=262144']),
  copy('nbdcopy-devnull-sync', '/dev/null', ['--synchronous']),
  copy('nbdcopy-file', 'FILE', []),
];

const asIs = (argv) => argv;

/** `uris`: one URI, or one per client (row.clients of them). */
export function runRow(row, uriOrUris, { seconds, ramp, dir, sizeBytes, log, client = asIs }) {
  const uris = Array.isArray(uriOrUris) ? uriOrUris : [uriOrUris];
  return row.kind === 'fio' ? runFio(row, uris, seconds, ramp, dir, log, client) : runCopy(row, uris[0], seconds, dir, sizeBytes, client);
}

function runFio(row, uris, seconds, ramp, dir, log, client) {
  const out = join(dir, `${row.name}.fio.json`);
  // Options before the first --name are global; each client is one job with its own URI.
  const jobs = uris.length === 1 ? [`--name=${row.name}`, `--uri=${uris[0]}`] : uris.flatMap((u, i) => [`--name=${row.name}-c${i}`, `--uri=${u}`]);
  const argv = [
    'fio', '--ioengine=nbd', `--rw=${row.rw}`, `--bs=${row.bs}`,
    `--iodepth=${row.qd}`, `--numjobs=${row.jobs}`, '--group_reporting', '--time_based',
    `--runtime=${seconds}`, `--ramp_time=${ramp}`, '--randrepeat=0', '--output-format=json', `--output=${out}`,
    ...(row.mix ? [`--rwmixread=${row.mix}`] : []),
    ...jobs,
  ];
  const m = runMeasured(client(argv));
  if (m.rc !== 0) throw new Error(`fio failed (rc ${m.rc}): ${m.stderr.trim().split('\n').pop()} (log ${log})`);
  const job = JSON.parse(readFileSync(out, 'utf8')).jobs[0];
  if (job.error) throw new Error(`fio job error ${job.error}`);
  const sides = [job.read, job.write].filter((s) => s && s.io_bytes > 0);
  if (sides.length === 0) throw new Error('fio moved no data');
  const iops = sides.reduce((a, s) => a + s.iops, 0);
  const bytesPerSec = sides.reduce((a, s) => a + s.bw_bytes, 0);
  const lat = row.latency ? latencyUs(sides[0]) : {};
  return { value: row.unit === 'IOPS' ? iops : bytesPerSec / 2 ** 20, bytesPerSec, ...lat, clientCpuPct: (100 * m.cpu) / m.wall, wall: m.wall };
}

/** fio's completion latency (clat: submission to completion) of one side, in µs. */
function latencyUs(side) {
  const clat = side.clat_ns ?? {};
  const p99 = clat.percentile?.['99.000000'];
  if (typeof clat.mean !== 'number' || typeof p99 !== 'number') throw new Error('fio reported no clat percentiles');
  return { latMeanUs: clat.mean / 1000, latP99Us: p99 / 1000 };
}

/** nbdcopy of the whole disk, repeated until `seconds` have passed; MiB/s over all copies. */
function runCopy(row, uri, seconds, dir, sizeBytes, client) {
  let wall = 0;
  let cpu = 0;
  let copies = 0;
  const dest = row.dest === 'FILE' ? join(dir, 'copy.img') : row.dest;
  while (copies === 0 || wall < seconds) {
    if (row.dest === 'FILE') rmSync(dest, { force: true });
    const m = runMeasured(client(['nbdcopy', ...row.args, uri, dest]));
    if (m.rc !== 0) throw new Error(`nbdcopy failed (rc ${m.rc}): ${m.stderr.trim().split('\n').pop()}`);
    wall += m.wall;
    cpu += m.cpu;
    copies++;
  }
  if (row.dest === 'FILE') rmSync(dest, { force: true });
  return { value: (copies * sizeBytes) / 2 ** 20 / wall, bytesPerSec: (copies * sizeBytes) / wall, clientCpuPct: (100 * cpu) / wall, wall };
}
