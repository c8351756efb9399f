// Table and results.json for scripts/bench/run.mjs: medians over rounds per (row, target),
// the best peer per row, and each cownbd target's ratio to it. Reference targets
// (cownbd-raw, nbdkit-file) are shown but are never "the best peer". A "-tls" target is
// compared with the best "-tls" peer only. Besides the throughput table: server/client CPU
// per cell, server CPU-seconds per GiB moved (lower is better: what a bigger host gets per
// core), and for the QD1 rows fio's completion latency (mean / p99).
import { REFERENCE } from './targets.mjs';
import { isTls } from './tls.mjs';

const median = (xs) => {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round1 = (x) => (x === undefined ? null : Math.round(x * 10) / 10);
const round3 = (x) => (x === undefined ? null : Math.round(x * 1000) / 1000);

export function printReport({ cells, rows, targets, isOurs, meta }) {
  const peers = targets.filter((t) => !isOurs(t) && !REFERENCE.includes(t));
  const ours = targets.filter(isOurs);
  const summary = rows.map((row) => {
    const byTarget = {};
    for (const target of targets) {
      const mine = cells.filter((c) => c.row === row.name && c.target === target);
      const ok = mine.filter((c) => c.ok);
      byTarget[target] = ok.length
        ? {
            value: round1(median(ok.map((c) => c.value))),
            serverCpuPct: round1(median(ok.map((c) => c.serverCpuPct))),
            clientCpuPct: round1(median(ok.map((c) => c.clientCpuPct))),
            cpuSecPerGiB: round3(median(ok.map((c) => c.cpuSecPerGiB).filter((x) => x !== undefined))),
            ...(row.latency
              ? { latMeanUs: round1(median(ok.map((c) => c.latMeanUs))), latP99Us: round1(median(ok.map((c) => c.latP99Us))) }
              : {}),
            rounds: ok.map((c) => round1(c.value)),
          }
        : { value: null, failures: mine.map((c) => c.reason), notMeasured: mine.length === 0 };
    }
    const bestOf = (tls) => {
      let best;
      for (const p of peers.filter((t) => isTls(t) === tls)) if (byTarget[p].value !== null && (!best || byTarget[p].value > byTarget[best].value)) best = p;
      return best;
    };
    const best = bestOf(false);
    const bestTls = bestOf(true);
    const ratios = {};
    for (const t of ours) {
      const v = byTarget[t].value;
      const b = isTls(t) ? bestTls : best;
      ratios[t] = b && v !== null ? Math.round((100 * v) / byTarget[b].value) / 100 : null;
    }
    return { row: row.name, unit: row.unit, bestPeer: best ?? null, bestTlsPeer: bestTls ?? null, targets: byTarget, ratios };
  });

  const fmt = (unit, cell) => {
    const v = cell.value;
    if (v === null || v === undefined) return cell.notMeasured ? '-' : 'FAIL';
    return unit === 'IOPS' ? `${(v / 1000).toFixed(1)}k` : v.toFixed(0);
  };
  const tlsPeers = peers.some(isTls);
  const table = [['row', 'unit', ...targets, 'best peer', ...(tlsPeers ? ['best -tls peer'] : []), ...ours.map((t) => `${t}/best`)]];
  for (const s of summary) {
    table.push([
      s.row, s.unit, ...targets.map((t) => fmt(s.unit, s.targets[t])), s.bestPeer ?? '-', ...(tlsPeers ? [s.bestTlsPeer ?? '-'] : []),
      ...ours.map((t) => (s.ratios[t] === null ? 'n/a' : s.ratios[t].toFixed(2))),
    ]);
  }
  const cpu = [['CPU % server/client', ...targets]];
  for (const s of summary) {
    cpu.push([s.row, ...targets.map((t) => (s.targets[t].value === null ? '-' : `${s.targets[t].serverCpuPct.toFixed(0)}/${s.targets[t].clientCpuPct.toFixed(0)}`))]);
  }
  const perGiB = [['server CPU-s per GiB', ...targets]];
  for (const s of summary) perGiB.push([s.row, ...targets.map((t) => (s.targets[t].cpuSecPerGiB == null ? '-' : s.targets[t].cpuSecPerGiB.toFixed(2)))]);
  const latRows = summary.filter((s) => rows.find((r) => r.name === s.row)?.latency);
  const lat = [['latency µs mean/p99', ...targets]];
  for (const s of latRows) lat.push([s.row, ...targets.map((t) => (s.targets[t].latMeanUs == null ? '-' : `${s.targets[t].latMeanUs.toFixed(0)}/${s.targets[t].latP99Us.toFixed(0)}`))]);
  console.log(`\ncownbd benchmark: medians of ${meta.rounds} interleaved round(s), ${meta.seconds}s per cell (+${meta.ramp}s ramp), base ${meta.baseSizeMiB} MiB`);
  for (const n of meta.notes ?? []) console.log(n); // e.g. the modern mode's negotiated protocol per target
  printTable(table, 2);
  console.log('');
  printTable(cpu, 1);
  console.log('');
  printTable(perGiB, 1);
  if (latRows.length) {
    console.log('');
    printTable(lat, 1);
  }
  const failures = cells.filter((c) => !c.ok);
  if (failures.length) {
    const byReason = new Map();
    for (const f of failures) byReason.set(`${f.target}: ${f.reason}`, [...(byReason.get(`${f.target}: ${f.reason}`) ?? []), f.row]);
    console.log('\nFailures:');
    for (const [reason, failedRows] of byReason) console.log(`  ${reason} (${[...new Set(failedRows)].join(', ')})`);
  }
  return { date: new Date().toISOString(), ...meta, targets, peers, rows: summary, cells };
}

function printTable(table, leftCols) {
  const widths = table[0].map((_, i) => Math.max(...table.map((l) => String(l[i]).length)));
  const line = (l) => l.map((c, i) => (i < leftCols ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
  console.log(line(table[0]));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const l of table.slice(1)) console.log(line(l));
}
