// /proc readers for the benchmark: CPU time and RSS of a server's process tree.
//
// A server may fork (nbd-server forks one child per connection; the children are reaped
// by the parent, so their time lands in the parent's cutime/cstime). cpuSeconds() sums
// utime+stime+cutime+cstime of the root and of every live descendant, so the difference of
// two samples is the CPU the whole tree used in between.
import { createServer } from 'node:net';
import { readdirSync, readFileSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

function statFields(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after "(comm)": state is field 3; comm may contain spaces, so split after ')'.
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

function descendants(root) {
  const children = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(name);
    if (!f) continue;
    const ppid = Number(f[1]);
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(Number(name));
  }
  const out = [];
  const queue = [root];
  while (queue.length) {
    const pid = queue.shift();
    out.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return out;
}

/** CPU seconds used so far by pid and its descendants (including reaped children). */
export function cpuSeconds(pid) {
  let ticks = 0;
  for (const p of descendants(pid)) {
    const f = statFields(p);
    if (!f) continue;
    // utime, stime, cutime, cstime are fields 14-17 (1-based), i.e. f[11..14] here.
    ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  }
  return ticks / CLK_TCK;
}

/** Resident set size in MiB (VmRSS) and its peak (VmHWM) of one process. */
export function rssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kib('VmRSS') / 1024, hwm: kib('VmHWM') / 1024 };
}

/**
 * Run a command to completion; returns wall seconds, the child's CPU seconds (user+sys)
 * and its peak RSS in MiB, measured by python's getrusage(RUSAGE_CHILDREN) around it.
 */
export function runMeasured(argv, { stdout = 'ignore', env } = {}) {
  const py = [
    'import resource, subprocess, sys, time, json',
    't = time.monotonic()',
    `r = subprocess.run(sys.argv[1:], stdout=${stdout === 'ignore' ? 'subprocess.DEVNULL' : 'None'}, stderr=subprocess.PIPE)`,
    'wall = time.monotonic() - t',
    'u = resource.getrusage(resource.RUSAGE_CHILDREN)',
    'print(json.dumps({"rc": r.returncode, "wall": wall, "cpu": u.ru_utime + u.ru_stime, "maxrssMiB": u.ru_maxrss / 1024, "stderr": r.stderr.decode(errors="replace")[-2000:]}))',
  ].join('\n');
  const res = spawnSync('python3', ['-c', py, ...argv], { encoding: 'utf8', env: env ?? process.env, maxBuffer: 64 << 20 });
  if (res.status !== 0) throw new Error(`measuring ${argv[0]} failed: ${res.stderr}`);
  const lines = res.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

/** A TCP port free on 127.0.0.1 right now (the kernel picks it; we release it for a server). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}
