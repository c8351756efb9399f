/**
 * What a process kill may lose (issue 26, item 16). Writes acknowledged without a FLUSH
 * have their data in the overlay's page cache, which outlives the process; the allocation
 * bits that make them visible lived only in memory until a FLUSH or close, so a kill lost
 * every such write with no time limit (the Linux kernel client: 9 acknowledged 256 KiB
 * writes without fsync, SIGKILL, 0 of 9 kept). Now a writable overlay persists its bits the
 * FLUSH way (data fdatasync, then the bitmap) every --bitmap-sync-interval while any are
 * unpersisted (default 1 s): after that long, a kill loses nothing.
 *
 * Real parts: the built CLI server, python3-libnbd writing 9 × 256 KiB to a cow export, an
 * add-cow export and an --overlay-dir machine, the client still connected when the server
 * gets SIGKILL (as a kernel client would be); then a fresh server serves every block, and
 * `check` is clean. The ordering of those periodic persists is pinned down under strace by
 * test/campaign/write-ordering.test.ts. Ephemeral overlays, which nothing reopens after a
 * kill, are left out of the timer (strace: no fdatasync).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, findNbdPython, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const BLOCK = 256 * 1024;
const BLOCKS = 9;
/** The default interval (1 s) plus a margin for a loaded machine. */
const WAIT_MS = 1000 + 2000;
const usable = requireNbdPython();

/** Block i of export k: bytes no base pattern and no other block has. */
const PY_BLOCKS = `
def block(k, i):
    return bytes(((k * 37 + i * 11 + j) % 251) + 1 for j in range(256)) * (BLOCK // 256)
def offset(i):
    return i * (SIZE // BLOCKS) // 4096 * 4096
`;

/** Writes every block to every export, no FLUSH, prints "written", then stays connected. */
const WRITER = `
import nbd, sys, time
${PY_BLOCKS}
hs = []
for uri in URIS:
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
for k, h in enumerate(hs):
    for i in range(BLOCKS):
        h.pwrite(block(k, i), offset(i))
print("written", flush=True)
time.sleep(120)
`;

/** For each export, which blocks read back as written. */
const READER = `
import nbd, json
${PY_BLOCKS}
out = []
for k, uri in enumerate(URIS):
    h = nbd.NBD()
    h.connect_uri(uri)
    out.append([h.pread(BLOCK, offset(i)) == block(k, i) for i in range(BLOCKS)])
    h.shutdown()
print(json.dumps(out))
`;

const vars = (uris: string[]) => ({ URIS: uris, BLOCK, BLOCKS, SIZE });

/** Run WRITER until it has written everything; the returned function kills it. */
async function writeAndStayConnected(uris: string[]): Promise<() => void> {
  const py = findNbdPython()!;
  const prelude = Object.entries(vars(uris))
    .map(([k, v]) => `${k} = __import__('json').loads(${JSON.stringify(JSON.stringify(v))})`)
    .join('\n');
  const proc = spawn(py, ['-c', `${prelude}\n${WRITER}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`writer did not finish: ${out}${err}`)), 60_000);
    proc.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('written')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`writer exited (${code}) before writing everything: ${err}`));
    });
  });
  return () => proc.kill('SIGKILL');
}

/** A base, a cow and an add-cow overlay over it, and an overlay directory. */
function setUp(dir: { file(name: string): string }) {
  const base = createPatternedImage(dir.file('base.raw'), SIZE, 5);
  const cow = dir.file('disk.cow');
  const ac = dir.file('disk.add-cow');
  execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'cow', cow, '--backing', base]);
  execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'add-cow', ac, '--image', 'disk.img', '--backing', base, '--cluster-size', '64K']);
  const machines = dir.file('machines');
  const args = ['--export', `cow=${cow}`, '--export', `ac=${ac}`, '--base', base, '--overlay-dir', machines];
  return { base, cow, ac, machine: path.join(machines, 'vm1.cow'), args };
}

/** Write without FLUSH, wait `waitMs`, SIGKILL the server; then what a fresh server serves. */
async function killAfterWrites(args: string[], waitMs: number): Promise<boolean[][]> {
  const names = ['cow', 'ac', 'vm1'];
  const srv = await startServer(args);
  const stopWriter = await writeAndStayConnected(names.map((n) => srv.uri(n)));
  try {
    await new Promise((resolve) => setTimeout(resolve, waitMs));
    await srv.stop('SIGKILL');
  } finally {
    stopWriter();
  }
  const fresh = await startServer(args);
  try {
    return JSON.parse(await nbdPython(READER, vars(names.map((n) => fresh.uri(n))))) as boolean[][];
  } finally {
    await fresh.stop();
  }
}

function checkExit(file: string): number | null {
  return spawnSync(process.execPath, [CLI_PATH, 'check', file], { encoding: 'utf8' }).status;
}

describe.runIf(usable)('a process kill loses at most the bitmap sync interval', () => {
  const tmp = makeTempDir('cownbd-kill-');
  afterAll(() => tmp.cleanup());

  it(`9 × 256 KiB written without FLUSH survive SIGKILL ${WAIT_MS} ms later (cow, add-cow, --overlay-dir machine)`, async () => {
    const t = setUp({ file: (n) => tmp.file(`a-${n}`) });
    const kept = await killAfterWrites(t.args, WAIT_MS);
    const count = kept.map((blocks) => blocks.filter(Boolean).length);
    expect(count, `blocks kept per export (cow, add-cow, machine) of ${BLOCKS}`).toEqual([BLOCKS, BLOCKS, BLOCKS]);
    // What the kill left is consistent (bits persisted with their data) and the base untouched.
    for (const f of [t.cow, t.ac, t.machine]) expect(checkExit(f), `check ${f}`).toBe(0);
  }, 120_000);

  it('the interval comes from the TOML config too: bitmap-sync-interval = 0 turns the periodic sync off', async () => {
    const t = setUp({ file: (n) => tmp.file(`b-${n}`) });
    const config = tmp.file('b.toml');
    writeFileSync(config, '[server]\nbitmap-sync-interval = 0\n');
    const kept = await killAfterWrites([...t.args, '--config', config], WAIT_MS);
    // Off: nothing persisted the bits (no FLUSH, no close), so the kill lost them all. This
    // is what every kill did before the periodic sync; a disconnected machine would be
    // closed (and persisted), but this client stays connected.
    expect(kept.map((blocks) => blocks.filter(Boolean).length)).toEqual([0, 0, 0]);
  }, 120_000);

  it('a bad --bitmap-sync-interval or config value is refused, naming the option and the value', () => {
    const t = setUp({ file: (n) => tmp.file(`c-${n}`) });
    const bad = spawnSync(process.execPath, [CLI_PATH, 'serve', ...t.args, '--bitmap-sync-interval', '-1', '-p', '0'], { encoding: 'utf8' });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/--bitmap-sync-interval must be a number of seconds from 0 \(off\) to 3600 \(got "-1"\)/);
    const config = tmp.file('c.toml');
    writeFileSync(config, '[server]\nbitmap-sync-interval = "soon"\n');
    const badFile = spawnSync(process.execPath, [CLI_PATH, 'serve', '--config', config, '-p', '0'], { encoding: 'utf8' });
    expect(badFile.status).not.toBe(0);
    expect(badFile.stderr).toMatch(/c\.toml:2: server\.bitmap-sync-interval: must be a number \(got "soon"\)/);
  });

  it.runIf(requireTool('strace'))('ephemeral overlays (deleted on disconnect, and after a kill at the next start) get no periodic fdatasync', async () => {
    const base = createPatternedImage(tmp.file('d-base.raw'), SIZE, 6);
    const trace = tmp.file('d.trace');
    const sock = tmp.file('d.sock');
    const proc = spawn('strace', ['-f', '-qq', '-o', trace, '-e', 'trace=fdatasync,fsync', process.execPath, CLI_PATH, 'serve', '--ephemeral', base, '-U', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        const t = setTimeout(() => reject(new Error(`no listen line: ${out}`)), 30_000);
        proc.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('listening on')) {
            clearTimeout(t);
            resolve();
          }
        });
      });
      const stopWriter = await writeAndStayConnected([`nbd+unix:///?socket=${sock}`]);
      await new Promise((resolve) => setTimeout(resolve, WAIT_MS));
      stopWriter();
    } finally {
      proc.kill('SIGKILL'); // strace kills its tracee with it
      await new Promise((resolve) => proc.once('exit', resolve));
    }
    // Creating the overlay syncs it (crash-safe creation); nothing may follow the writes.
    const syncs = readFileSync(trace, 'utf8').split('\n').filter((l) => /fdatasync\(/.test(l));
    expect(syncs, syncs.join('\n')).toEqual([]);
  }, 120_000);
});
