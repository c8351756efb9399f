// The qcow2 benchmark (scripts/bench.sh qcow2): reading a qcow2 base, uncompressed and
// compressed, with cownbd (serve -r -f qcow2) against qemu-nbd (-r -f qcow2) and nbdkit's
// qcow2dec filter where this nbdkit has it (1.36+), same run, same rows as the throughput
// table's read rows. The images are made from the bench base: every other 64 KiB block is
// replaced by text, so `qemu-img convert -c` really compresses half the clusters (random
// data would be stored uncompressed). Variants: BENCH_QCOW2 = plain,zlib,zstd (default all).
//
//   node qcow2.mjs  (configured by environment, see scripts/bench.sh --help)
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { cpuSeconds, freePort } from './proc.mjs';
import { printReport } from './report.mjs';
import { ROWS, runRow } from './rows.mjs';

import { base, benchDir, env, ramp, rounds, seconds, sizeBytes, split } from './settings.mjs';
const variants = split(env.BENCH_QCOW2).length ? split(env.BENCH_QCOW2) : ['plain', 'zlib', 'zstd'];
const READ_ROWS = ['randread-4k-qd32', 'seqread-1m-qd8', 'nbdcopy-null'];
const rows = ROWS.filter((r) => READ_ROWS.includes(r.name));
const hasQcow2dec = spawnSync('nbdkit', ['--filter=qcow2dec', 'null', '--dump-plugin'], { stdio: 'ignore' }).status === 0;
const targets = ['cownbd-qcow2', 'qemu-qcow2', ...(hasQcow2dec ? ['nbdkit-qcow2dec'] : [])];
const runDir = mkdtempSync(join(benchDir, 'run.'));

function must(argv) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${(r.stderr || r.stdout || '').trim()}`);
}

/** The bench base with every other 64 KiB block made compressible (cached next to the base). */
function sourceImage() {
  const file = join(benchDir, `qcow2-src-${sizeBytes / 2 ** 20}M.raw`);
  if (existsSync(file)) return file;
  const text = Buffer.alloc(65536);
  text.fill('cownbd qcow2 benchmark: this block compresses well. ');
  const block = Buffer.allocUnsafe(65536);
  const inFd = openSync(base, 'r');
  const outFd = openSync(`${file}.tmp`, 'w');
  for (let at = 0, i = 0; at < sizeBytes; at += 65536, i++) {
    readSync(inFd, block, 0, 65536, at);
    writeSync(outFd, i % 2 ? text : block, 0, 65536, at);
  }
  closeSync(inFd);
  closeSync(outFd);
  must(['mv', `${file}.tmp`, file]);
  return file;
}

function image(variant) {
  const file = join(benchDir, `qcow2-${variant}-${sizeBytes / 2 ** 20}M.qcow2`);
  if (existsSync(file)) return file;
  const opts = variant === 'plain' ? [] : ['-c', '-o', `compression_type=${variant}`];
  must(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', ...opts, sourceImage(), `${file}.tmp`]);
  must(['mv', `${file}.tmp`, file]);
  return file;
}

function argvFor(target, img, port) {
  if (target === 'cownbd-qcow2') return [env.NODE24 || process.execPath, env.COWNBD_CLI, 'serve', '-r', '-f', 'qcow2', img, '-p', String(port), ...split(env.COWNBD_SERVE_ARGS)];
  if (target === 'qemu-qcow2') return ['qemu-nbd', '-r', '-t', '--shared=16', '-f', 'qcow2', '-b', '127.0.0.1', '-p', String(port), img];
  return ['nbdkit', '-f', '-r', '-i', '127.0.0.1', '-p', String(port), '--filter=qcow2dec', 'file', `file=${img}`];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function start(target, img, log) {
  const port = await freePort();
  const argv = argvFor(target, img, port);
  writeFileSync(log, `$ ${argv.join(' ')}\n`, { flag: 'a' });
  const out = openSync(log, 'a');
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', out, out], detached: true });
  closeSync(out);
  const uri = `nbd://127.0.0.1:${port}/`;
  const stop = async () => {
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {}
    for (let i = 0; i < 100 && child.exitCode === null && child.signalCode === null; i++) await sleep(50);
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  };
  for (let i = 0; i < 150; i++) {
    if (child.exitCode !== null) throw new Error(`server exited at startup (see ${log})`);
    if (spawnSync('nbdinfo', ['--size', uri]).status === 0) return { pid: child.pid, uri, stop };
    await sleep(100);
  }
  await stop();
  throw new Error(`server did not answer on ${uri} (see ${log})`);
}

/** Every target reads the image from the page cache, as in the throughput table. */
function warm(file) {
  const buf = Buffer.allocUnsafe(4 * 2 ** 20);
  const fd = openSync(file, 'r');
  while (readSync(fd, buf, 0, buf.length, null) > 0);
  closeSync(fd);
}

const reports = {};
for (const variant of variants) {
  const img = image(variant);
  const cells = [];
  for (let round = 1; round <= rounds; round++) {
    for (const row of rows) {
      for (const target of targets) {
        const dir = join(runDir, `${variant}.${target}.${row.name}.r${round}`);
        mkdirSync(dir);
        warm(img);
        const log = join(dir, 'log');
        try {
          const server = await start(target, img, log);
          try {
            const cpu0 = cpuSeconds(server.pid);
            const r = runRow(row, server.uri, { seconds, ramp, dir, sizeBytes, log });
            const serverCpuPct = (100 * (cpuSeconds(server.pid) - cpu0)) / r.wall;
            cells.push({ target, row: row.name, round, ok: true, value: r.value, serverCpuPct, clientCpuPct: r.clientCpuPct });
            console.error(`bench qcow2 ${variant}: round ${round} ${row.name.padEnd(18)} ${target.padEnd(16)} ${r.value.toFixed(row.unit === 'IOPS' ? 0 : 1)} ${row.unit}`);
          } finally {
            await server.stop();
          }
        } catch (err) {
          cells.push({ target, row: row.name, round, ok: false, reason: err.message });
          console.error(`bench qcow2 ${variant}: round ${round} ${row.name} ${target} FAIL: ${err.message}`);
        }
      }
    }
  }
  console.log(`\n## qcow2 base, ${variant === 'plain' ? 'uncompressed' : `compressed (${variant})`}`);
  reports[variant] = printReport({ cells, rows, targets, isOurs: (t) => t.startsWith('cownbd-'), meta: { seconds, ramp, rounds, baseSizeMiB: sizeBytes / 2 ** 20, runDir, image: img } });
}
const out = join(benchDir, 'results-qcow2.json');
writeFileSync(out, `${JSON.stringify({ qcow2dec: hasQcow2dec, reports }, null, 2)}\n`);
console.log(`\nresults: ${out}`);
