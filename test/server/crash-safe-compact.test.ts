/**
 * Compaction survives kill -9 at every step (issue 26, item 3): the server is killed by
 * strace (SIGKILL injected at the Nth call of a chosen system call) while it compacts 3
 * snapshot layers into one. Every point must leave a chain that opens and reads the
 * bytes the client wrote (its model), `cownbd check` clean on every layer file, and a
 * later compaction that finishes the job. The points cover each step of compact.ts:
 * stray-temp cleanup and the unlinks of the merged layers (unlink), the copy of the
 * oldest layer (pwrite64, ftruncate), the merge writes (pwrite64), data and bitmap syncs
 * (fdatasync), the mtimes (utimensat), the temp file's and the directory's syncs (fsync)
 * and the switching rename: each call of each, until the compaction is past it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, readFileSync, readdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { chainLayers } from '../../src/control/compact.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { api } from '../control/control-helpers.js';
import { VERIFY, WRITER } from '../control/compact-scripts.js';

const SIZE = 8 << 20;

/**
 * Kill points: every call of each system call a compaction makes, from the first on, until
 * one is past the end (the compaction answered). pwrite64 (one per merged run) only its
 * first calls. unlink #1 may be serve's own (the admin socket's stale name): from 2.
 */
const SYSCALLS: Array<[string, number, number]> = [
  ['unlink', 2, 8],
  ['ftruncate', 1, 3],
  ['pwrite64', 1, 3],
  ['fdatasync', 1, 4],
  ['utimensat', 1, 4],
  ['fsync', 1, 5],
  ['rename', 1, 3],
];

/** `serve` under strace, killed at the `when`th `syscall`; POSTs a compaction once the admin API is up. */
function compactKilledAt(syscall: string, when: number, args: string[], sock: string): Promise<string> {
  return new Promise((resolve) => {
    const proc = spawn('strace', ['-f', '-qq', '-o', '/dev/null', '-e', `trace=${syscall}`, '-e', `inject=${syscall}:signal=KILL:when=${when}`, process.execPath, CLI_PATH, 'serve', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // strace counts `when` per thread: with one libuv worker, every asynchronous file
      // operation of the compaction runs on the same thread, so #N is the Nth of the run.
      env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
    });
    let out = '';
    let asked = false;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill('SIGKILL');
    }, 20_000);
    let finished = false;
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!asked && out.includes('admin API on')) {
        asked = true;
        void api({ socketPath: sock }, 'POST', '/exports/vm1/compact').then(
          (r) => {
            // Past the last call of this kind: the compaction is done; stop the server.
            out += `\ncompact answered ${r.status} ${r.text}\n`;
            finished = true;
            proc.kill('SIGKILL');
          },
          () => undefined,
        );
      }
    });
    proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(`${finished ? 'finished' : timedOut ? `not killed: no ${syscall} #${when} within 20 s` : (signal ?? (code === 137 ? 'SIGKILL' : `exit ${code}`))}\n${out}`);
    });
  });
}

/** Overlay vm1 in `dir`: 3 snapshot layers and a top, written by WRITER (the same bytes for the same seed). */
async function writeChain(base: string, dir: string, sock: string, model: string): Promise<void> {
  const srv = await startServer(['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`]);
  try {
    for (const end = Date.now() + 10_000; !srv.stdout().includes('admin API on') && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
    const w = JSON.parse(await nbdPython(WRITER, { URI: srv.uri('vm1'), SOCK: sock, BASE: base, MODEL: model, SIZE, ROUNDS: 3, SEED: 31 }, 120_000)) as { snapshots: number[] };
    expect(w.snapshots).toEqual([201, 201, 201]);
  } finally {
    await srv.stop();
  }
  expect(readdirSync(dir).sort()).toEqual(['vm1.cow', 'vm1.snap-1.cow', 'vm1.snap-2.cow', 'vm1.snap-3.cow']);
}

describe.runIf(requireNbdPython() && requireTool('strace'))('compaction survives kill -9 at every step', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('every kill point leaves a chain with the written bytes; a later compaction completes', async () => {
    const base = createPatternedImage(tmp.file('golden.img'), SIZE, 13);
    const model = tmp.file('model.bin');
    await writeChain(base, tmp.file('first'), tmp.file('a0.sock'), model);

    // A copy of the overlay directory: its headers still name the original's layers. Its
    // compaction must not merge those, nor delete the copy's own files as "not in the chain".
    const copy = tmp.file('copy');
    cpSync(tmp.file('first'), copy, { recursive: true, preserveTimestamps: true });
    const csrv = await startServer(['--base', base, '--overlay-dir', copy, '--admin', `unix:${tmp.file('ac.sock')}`]);
    try {
      for (const end = Date.now() + 10_000; !csrv.stdout().includes('admin API on') && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
      const r = await api({ socketPath: tmp.file('ac.sock') }, 'POST', '/exports/vm1/compact');
      expect(r.status, r.text).toBe(409);
      expect(r.body.error).toContain(`its chain uses ${tmp.file('first')}/vm1.snap-1.cow, which is not one of its own snapshot layers`);
    } finally {
      await csrv.stop();
    }
    expect(readdirSync(copy).sort()).toEqual(['vm1.cow', 'vm1.snap-1.cow', 'vm1.snap-2.cow', 'vm1.snap-3.cow']);
    expect(readdirSync(tmp.file('first')).sort()).toEqual(['vm1.cow', 'vm1.snap-1.cow', 'vm1.snap-2.cow', 'vm1.snap-3.cow']);

    let i = 0;
    const killedAt: string[] = [];
    for (const [syscall, first, last] of SYSCALLS) for (let when = first; when <= last; when++) {
      const n = i++;
      // A fresh chain written the same way (headers name their layers by absolute path: no copies).
      const dir = tmp.file(`vms-${n}`);
      await writeChain(base, dir, tmp.file(`w${n}.sock`), tmp.file(`model-${n}.bin`));
      expect(readFileSync(tmp.file(`model-${n}.bin`)).equals(readFileSync(model))).toBe(true);
      const sock = tmp.file(`a${n + 1}.sock`);
      const args = ['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`, '-p', '0'];
      const how = await compactKilledAt(syscall, when, args, sock);
      const where = `killed at ${syscall} #${when}`;
      const end = how.split('\n')[0];
      expect(['SIGKILL', 'finished'], `${where}: ${how}`).toContain(end);
      // Killed during the compaction, not while starting.
      expect(how, where).toContain('admin API on');
      const left = readdirSync(dir).sort();

      // The chain opens and reads the model's bytes; every layer file checks clean.
      const again = await startServer(['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`]);
      try {
        const v = JSON.parse(await nbdPython(VERIFY, { URI: again.uri('vm1'), MODEL: model }, 60_000)) as { bad: number[] };
        expect(v.bad, `${where}, files ${left.join(' ')}`).toEqual([]);
        // Every layer of the chain checks clean. Merged layers a kill left behind are named
        // by no header (their backings may be gone already): the next compaction deletes them.
        const chain = [`${dir}/vm1.cow`, ...(await chainLayers(`${dir}/vm1.cow`))];
        for (const f of chain) {
          const c = spawnSync(process.execPath, [CLI_PATH, 'check', f], { encoding: 'utf8', timeout: 60_000 });
          expect(c.status, `${where}: check ${f}: ${c.stdout}${c.stderr}`).toBe(0);
        }
        // A later compaction finishes the job: one frozen layer, no stray files.
        const r = await api({ socketPath: sock }, 'POST', '/exports/vm1/compact');
        expect(r.status, `${where}: ${r.text}`).toBe(200);
        expect(readdirSync(dir).sort(), where).toEqual(['vm1.cow', 'vm1.snap-3.cow']);
        const v2 = JSON.parse(await nbdPython(VERIFY, { URI: again.uri('vm1'), MODEL: model }, 60_000)) as { bad: number[] };
        expect(v2.bad, `${where}, after compacting again`).toEqual([]);
      } finally {
        await again.stop();
      }
      console.log(`${where}: ${end}, left ${left.join(' ')}; verified, compacted again`);
      if (end === 'finished') break;
      killedAt.push(`${syscall}#${when}`);
    }
    console.log(`${killedAt.length} kill points: ${killedAt.join(' ')}`);
    // Every kind of step was hit at least once (the list is not silently empty).
    for (const [syscall] of SYSCALLS) expect(killedAt.some((k) => k.startsWith(`${syscall}#`)), syscall).toBe(true);
  }, 600_000);
});
