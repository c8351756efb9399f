// Turns scripts/bench.sh's per-row fio JSON into a table and .bench/results.json.
//
//   node report.mjs ROWS.tsv OUT.json SET RUNTIME RAMP SIZE_MIB
//
// ROWS.tsv lines: target \t row \t ok|fail \t fio-json-path|reason.
// 4k rows are compared in IOPS, 1M rows in MiB/s. Each cownbd target is compared with the
// peers of its own group (raw: nbdkit-file; cow: nbdkit-cow, nbdkit-cow4k, qemu-qcow2).
import { readFileSync, writeFileSync } from 'node:fs';

const [rowsFile, outFile, set, runtime, ramp, sizeMiB] = process.argv.slice(2);
const GROUPS = {
  'cownbd-raw': ['nbdkit-file'],
  'cownbd-cow': ['nbdkit-cow', 'nbdkit-cow4k', 'qemu-qcow2'],
};
const ROW_ORDER = ['randread-4k-qd32', 'randwrite-4k-qd32', 'seqread-1m-qd8', 'seqwrite-1m-qd8'];

const results = []; // { target, row, ok, unit, value, iops, mibps, latMeanUs, latP99Us, reason }
for (const line of readFileSync(rowsFile, 'utf8').split('\n')) {
  if (!line) continue;
  const [target, row, status, rest] = line.split('\t');
  const unit = row.includes('-4k-') ? 'IOPS' : 'MiB/s';
  if (status !== 'ok') {
    results.push({ target, row, ok: false, unit, reason: rest });
    continue;
  }
  try {
    const job = JSON.parse(readFileSync(rest, 'utf8')).jobs[0];
    const side = row.includes('read') ? job.read : job.write;
    if (job.error) throw new Error(`fio job error ${job.error}`);
    if (!side || side.io_bytes === 0) throw new Error('fio moved no data');
    const iops = side.iops;
    const mibps = side.bw_bytes / (1024 * 1024);
    const clat = side.clat_ns ?? {};
    results.push({
      target,
      row,
      ok: true,
      unit,
      value: unit === 'IOPS' ? iops : mibps,
      iops: Math.round(iops),
      mibps: Math.round(mibps * 10) / 10,
      latMeanUs: Math.round((clat.mean ?? 0) / 100) / 10,
      latP99Us: Math.round((clat.percentile?.['99.000000'] ?? 0) / 100) / 10,
    });
  } catch (err) {
    results.push({ target, row, ok: false, unit, reason: `bad fio output ${rest}: ${err.message}` });
  }
}

const targets = [...new Set(results.map((r) => r.target))];
const rows = ROW_ORDER.filter((row) => results.some((r) => r.row === row));
const find = (target, row) => results.find((r) => r.target === target && r.row === row);
const fmt = (r) => {
  if (!r) return '-';
  if (!r.ok) return 'FAIL';
  return r.unit === 'IOPS' ? `${(r.value / 1000).toFixed(1)}k` : r.value.toFixed(0);
};

const ratioCols = [];
for (const [mine, peers] of Object.entries(GROUPS)) {
  if (!targets.includes(mine)) continue;
  for (const peer of peers) if (targets.includes(peer)) ratioCols.push([mine, peer]);
}
const ratios = {};
const header = ['row', 'unit', ...targets, ...ratioCols.map(([a, b]) => `${a}/${b}`)];
const table = [header];
for (const row of rows) {
  const unit = row.includes('-4k-') ? 'IOPS' : 'MiB/s';
  const line = [row, unit, ...targets.map((t) => fmt(find(t, row)))];
  for (const [a, b] of ratioCols) {
    const ra = find(a, row);
    const rb = find(b, row);
    const ratio = ra?.ok && rb?.ok && rb.value > 0 ? ra.value / rb.value : undefined;
    (ratios[row] ??= {})[`${a}/${b}`] = ratio === undefined ? null : Math.round(ratio * 100) / 100;
    line.push(ratio === undefined ? 'n/a' : ratio.toFixed(2));
  }
  table.push(line);
}

const widths = header.map((_, i) => Math.max(...table.map((l) => l[i].length)));
const print = (l) => console.log(l.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  '));
console.log(`\ncownbd benchmark: set=${set}, ${runtime}s per row (+${ramp}s ramp), base ${sizeMiB} MiB, fio ioengine=nbd`);
print(table[0]);
console.log(widths.map((w) => '-'.repeat(w)).join('  '));
table.slice(1).forEach(print);
const failures = results.filter((r) => !r.ok);
if (failures.length) {
  // One line per (target, reason): a server that is not built fails every row the same way.
  const byReason = new Map();
  for (const f of failures) {
    const key = `${f.target}\t${f.reason}`;
    byReason.set(key, [...(byReason.get(key) ?? []), f.row]);
  }
  console.log('\nFailures:');
  for (const [key, failedRows] of byReason) {
    const [target, reason] = key.split('\t');
    console.log(`  ${target} (${failedRows.join(', ')}): ${reason}`);
  }
}

writeFileSync(
  outFile,
  `${JSON.stringify(
    {
      date: new Date().toISOString(),
      set,
      runtimeSeconds: Number(runtime),
      rampSeconds: Number(ramp),
      baseSizeMiB: Number(sizeMiB),
      targets,
      results,
      ratios,
    },
    null,
    2,
  )}\n`,
);
console.log(`\nresults: ${outFile}`);
