// Memory benchmark (scripts/bench.sh memory): RSS of cownbd as a function of disk size and
// of what was written, for the table in docs/performance.md (issue: "memory flat in disk size").
//
// Per overlay (cow 16 GiB, cow 1 TiB, add-cow 1 TiB, over sparse bases of that size):
//   open     seconds from `cownbd serve` spawn until it answers NBD (Node start included)
//   open ms  milliseconds of openImage() + close() on the overlay inside one Node process,
//            after a warm-up open (what opening costs the server; median of 5)
//   idle     server RSS after open (one nbdinfo connection)
//   writes   server RSS after MEMORY_WRITES (10 000) random 4 KiB writes over the whole disk
//            (fio, QD32, then flush)
//   map / check / info   peak RSS (ru_maxrss) and seconds of each tool on the overlay
// Then 64 per-machine overlays of one 1 GiB base in one `serve --overlay-dir` process, each
// with 100 random 4 KiB writes and a flush, all connections open: server RSS.
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync, closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { freePort, rssMiB, runMeasured } from './proc.mjs';

const env = process.env;
const node = env.NODE24 || process.execPath;
const cli = env.COWNBD_CLI;
const writes = Number(env.MEMORY_WRITES ?? 10000);
const GiB = 2 ** 30;
const dir = mkdtempSync(join(env.BENCH_DIR, 'run.memory.'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function must(argv) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

async function serve(args, uri, log) {
  const out = openSync(log, 'a');
  const t0 = performance.now();
  const child = spawn(node, [cli, 'serve', ...args], { stdio: ['ignore', out, out] });
  closeSync(out);
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`server exited (see ${log})`);
    if (spawnSync('nbdinfo', ['--size', uri]).status === 0) {
      const openSeconds = (performance.now() - t0) / 1000;
      const stop = async () => {
        child.kill('SIGTERM');
        for (let j = 0; j < 200 && child.exitCode === null; j++) await sleep(50);
        if (child.exitCode === null) child.kill('SIGKILL');
      };
      return { pid: child.pid, openSeconds, stop };
    }
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`server did not answer on ${uri} (see ${log})`);
}

/** Median ms of openImage + close in one process (dist/formats/open-image.js), after a warm-up. */
function openMs(ov) {
  const url = new URL('../formats/open-image.js', new URL(`file://${cli}`)).href;
  const script = `
    const { openImage } = await import(${JSON.stringify(url)});
    const times = [];
    for (let i = 0; i < 6; i++) {
      const t0 = performance.now();
      const dev = await openImage(${JSON.stringify(ov)}, { readOnly: true });
      await dev.close();
      times.push(performance.now() - t0);
    }
    const rest = times.slice(1).sort((a, b) => a - b);
    console.log(rest[2].toFixed(1));`;
  return Number(must([node, '--input-type=module', '-e', script]).trim());
}

function tool(args) {
  const m = runMeasured([node, cli, ...args]);
  if (m.rc !== 0) throw new Error(`cownbd ${args.join(' ')}: ${m.stderr}`);
  return { rssMiB: Math.round(m.maxrssMiB), seconds: Math.round(m.wall * 100) / 100 };
}

async function overlayRow(format, size) {
  const sub = join(dir, `${format}-${size / GiB}G`);
  mkdirSync(sub);
  const base = join(sub, 'base.img');
  writeFileSync(base, '');
  truncateSync(base, size);
  const ov = join(sub, format === 'cow' ? 'vm.cow' : 'vm.add-cow');
  if (format === 'cow') must([node, cli, 'create', '-f', 'cow', ov, '--backing', base]);
  else must([node, cli, 'create', '-f', 'add-cow', ov, '--backing', base, '--image', join(sub, 'vm.img'), '--cluster-size', env.BENCH_ADDCOW_CLUSTER || '64K']);
  const port = await freePort();
  const uri = `nbd://127.0.0.1:${port}/`;
  const server = await serve([ov, '-p', String(port)], uri, join(sub, 'log'));
  let idle;
  let after;
  try {
    await sleep(500);
    idle = rssMiB(server.pid).rss;
    must([
      'fio', '--name=scatter', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=32',
      `--number_ios=${writes}`, '--norandommap', '--randrepeat=0', '--end_fsync=1', '--output-format=terse',
    ]);
    await sleep(500);
    after = rssMiB(server.pid).rss;
  } finally {
    await server.stop();
  }
  const row = {
    overlay: `${format} ${size >= 1024 * GiB ? `${size / 1024 / GiB} TiB` : `${size / GiB} GiB`}`,
    openSeconds: Math.round(server.openSeconds * 100) / 100,
    openMs: openMs(ov),
    idleMiB: Math.round(idle),
    afterWritesMiB: Math.round(after),
    map: tool(['map', ov]),
    check: tool(['check', ov]),
    info: tool(['info', ov]),
  };
  rmSync(sub, { recursive: true, force: true });
  return row;
}

/** 64 overlays of a 1 GiB base in one process, all connected at once (python3-libnbd). */
async function manyOverlays(count) {
  const sub = join(dir, 'many');
  mkdirSync(join(sub, 'vms'), { recursive: true });
  const base = join(sub, 'base.img');
  writeFileSync(base, '');
  truncateSync(base, GiB);
  const port = await freePort();
  const server = await serve(['--base', base, '--overlay-dir', join(sub, 'vms'), '--create-dirs', '-p', String(port)], `nbd://127.0.0.1:${port}/probe`, join(sub, 'log'));
  const py = [
    'import nbd, random, sys',
    'hs = []',
    `for i in range(${count}):`,
    '    h = nbd.NBD(); h.connect_uri(f"nbd://127.0.0.1:%s/vm{i}" % sys.argv[1]); hs.append(h)',
    '    for _ in range(100): h.pwrite(b"x" * 4096, random.randrange(0, h.get_size() // 4096) * 4096)',
    '    h.flush()',
    'print("ready", flush=True)',
    'sys.stdin.readline()',
    'for h in hs: h.shutdown()',
  ].join('\n');
  // Debian's python3 has the libnbd binding (python3-libnbd); a pyenv python may not.
  const client = spawn('/usr/bin/python3', ['-c', py, String(port)], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    await new Promise((resolve, reject) => {
      client.stdout.on('data', (d) => String(d).includes('ready') && resolve());
      client.on('exit', (code) => reject(new Error(`libnbd client exited ${code}`)));
    });
    await sleep(500);
    return { overlays: count, rssMiB: Math.round(rssMiB(server.pid).rss) };
  } finally {
    client.stdin.end('\n');
    await sleep(300);
    await server.stop();
    rmSync(sub, { recursive: true, force: true });
  }
}

const rows = [];
for (const [format, size] of [['cow', 16 * GiB], ['cow', 1024 * GiB], ['add-cow', 1024 * GiB]]) {
  console.error(`memory: ${format} ${size / GiB} GiB …`);
  rows.push(await overlayRow(format, size));
}
console.error('memory: 64 overlays of a 1 GiB base …');
const many = await manyOverlays(64);
rmSync(dir, { recursive: true, force: true });

console.log(`\nRSS in MiB (${writes} random 4 KiB writes; tools: peak RSS, seconds)`);
console.log('| overlay | serve answers (s) | open (ms) | idle after open | after writes | `map` | `check` | `info` |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  const t = (x) => `${x.rssMiB} (${x.seconds} s)`;
  console.log(`| ${r.overlay} | ${r.openSeconds} | ${r.openMs} | ${r.idleMiB} | ${r.afterWritesMiB} | ${t(r.map)} | ${t(r.check)} | ${t(r.info)} |`);
}
console.log(`\n${many.overlays} overlays of a 1 GiB base in one process: ${many.rssMiB} MiB`);
const out = join(env.BENCH_DIR, 'memory.json');
writeFileSync(out, `${JSON.stringify({ date: new Date().toISOString(), writes, rows, many }, null, 2)}\n`);
console.log(`results: ${out}`);
