/**
 * Crash-safe creation (issue 15, defect 1): the server is killed (SIGKILL injected by
 * strace at a chosen system call) while it creates an overlay; the next server must
 * serve that name normally. Before the fix a kill after the header write left a
 * 4128-byte NAME.cow and every later connection to NAME failed. Also: half-created files
 * left by older versions are reported with what to do, and `create` of add-cow pairs.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, runNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { OPT, RawClient, optionRequest } from '../helpers/nbd-fixtures.js';
import { PRELUDE } from './py-prelude.js';

const hasNbd = requireNbdPython();
const hasStrace = requireTool('strace');
const MiB = 1024 * 1024;

/** Run `cownbd ARGS` under strace, killed by SIGKILL at the first `syscall`; resolves with how it ended. */
function runKilledAt(syscall: string, args: string[], onListening?: (uri: string) => Promise<unknown>): Promise<{ signal: string | null; out: string }> {
  return new Promise((resolve) => {
    const proc = spawn('strace', ['-f', '-qq', '-o', '/dev/null', '-e', `trace=${syscall}`, '-e', `inject=${syscall}:signal=KILL`, process.execPath, CLI_PATH, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let started = false;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill('SIGKILL');
    }, 15_000);
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m && !started && onListening) {
        started = true;
        void onListening(m[1]!).catch(() => undefined);
      }
    });
    proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
    // strace exits with the tracee's status; a SIGKILLed tracee makes strace report it.
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) resolve({ signal: `not killed: no ${syscall} within 15 s`, out });
      else resolve({ signal: signal ?? (code === 137 ? 'SIGKILL' : `exit ${code}`), out });
    });
  });
}

describe.runIf(hasNbd && hasStrace)('overlay creation survives kill -9 at every step (defect 1)', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const base = createPatternedImage(tmp.file('base.raw'), 4 * MiB, 3);

  // The steps of a creation: extend (ftruncate), sync the temp file and the directory
  // (fsync), publish (link), drop the temp name (unlink).
  for (const syscall of ['ftruncate', 'fsync', 'link', 'unlink']) {
    it(`killed at the first ${syscall} while creating vm1.cow: the next server serves vm1`, async () => {
      const dir = tmp.file(`ov-${syscall}`);
      const r = await runKilledAt(syscall, ['serve', '--base', base, '--overlay-dir', dir, '--create-dirs', '-p', '0'], (uri) =>
        runNbdPython(`import nbd\nh = nbd.NBD()\ntry:\n    h.connect_uri(URI)\nexcept nbd.Error:\n    pass\n`, { URI: uri.replace(/\/[^/]*$/, '/vm1') }),
      );
      // Every step the creation makes must have been reached, or the test proves nothing.
      expect(r.out, r.out).toMatch(/listening on/);
      expect(r.signal, r.out).toBe('SIGKILL');
      const cow = path.join(dir, 'vm1.cow');
      // Absent, or complete: never a 0-byte / header-only file under the final name.
      if (existsSync(cow)) expect(statSync(cow).size).toBeGreaterThan(4 * MiB);
      const srv = await startServer(['--base', base, '--overlay-dir', dir]);
      try {
        const out = await nbdPython(PRELUDE + 'h = conn()\nh.pwrite(b"alive", 0)\nh.flush()\nprint(h.pread(5, 0))\n', { URI: srv.uri('vm1') });
        expect(out).toContain("b'alive'");
      } finally {
        await srv.stop();
      }
      // The next start removed the dead process's temp file.
      expect(readdirSync(dir).filter((f) => f.endsWith('.cownbd-tmp'))).toEqual([]);
    });
  }

  it('`create -f add-cow` killed at its first ftruncate leaves no add-cow file', async () => {
    const dir = tmp.file('ac');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir);
    const ac = path.join(dir, 'disk.add-cow');
    const r = await runKilledAt('ftruncate', ['create', '-f', 'add-cow', ac, '--backing', base, '--image', 'disk.img']);
    expect(r.signal, r.out).toBe('SIGKILL');
    expect(existsSync(ac)).toBe(false);
    expect(existsSync(path.join(dir, 'disk.img'))).toBe(false);
  });

  it('a 0-byte or header-only leftover of an older version is reported with what to do', async () => {
    const dir = tmp.file('old');
    const { mkdirSync, readFileSync } = await import('node:fs');
    mkdirSync(dir);
    // Header-only: what an older version left after a kill between header write and extend.
    const srv0 = await startServer(['--base', base, '--overlay-dir', dir]);
    await nbdPython(PRELUDE + 'h = conn()\nh.shutdown()\n', { URI: srv0.uri('good') });
    await srv0.stop();
    writeFileSync(path.join(dir, 'headeronly.cow'), readFileSync(path.join(dir, 'good.cow')).subarray(0, 4128));
    writeFileSync(path.join(dir, 'empty.cow'), Buffer.alloc(0));
    const srv = await startServer(['--base', base, '--overlay-dir', dir]);
    try {
      for (const name of ['empty', 'headeronly']) {
        const c = await RawClient.connect({ port: srv.port! });
        await c.greet();
        const n = Buffer.from(name);
        c.write(optionRequest(OPT.GO, Buffer.concat([Buffer.from([0, 0, 0, n.length]), n, Buffer.from([0, 0])])));
        const reply = await c.readOptionReply();
        c.close();
        expect(reply.type & 0x80000000).not.toBe(0);
        expect(reply.data.toString()).toMatch(/creation was interrupted.*delete it/);
        // Reported, not silently deleted or reused.
        expect(existsSync(path.join(dir, `${name}.cow`))).toBe(true);
      }
    } finally {
      await srv.stop();
    }
  });
});
