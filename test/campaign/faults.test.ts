/**
 * Faults under the server (issue 15): ENOSPC on the overlay filesystem (a small tmpfs),
 * a read-only overlay filesystem (refused at start), a base deleted while served. (A base truncated while
 * served: test/server/faults.test.ts; descriptor exhaustion: test/server/hostile-clients.)
 * Each fault reaches only the client that hits it, with an errno or a one-line refusal;
 * the server and other exports go on; flushed data survives a restart.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { PRELUDE, lastJson } from '../server/py-prelude.js';
import { report } from './knobs.js';

const MiB = 1024 * 1024;
const root = process.getuid?.() === 0;
const hasNbd = requireNbdPython();

describe.runIf(hasNbd && root)('faults', () => {
  const tmp = makeTempDir('cownbd-faults-');
  const mounts: string[] = [];
  const tmpfs = (name: string, size: string): string => {
    const dir = tmp.file(name);
    mkdirSync(dir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
    mounts.push(dir);
    return dir;
  };
  afterAll(() => {
    for (const m of mounts.reverse()) execFileSync('umount', ['-l', m]);
    tmp.cleanup();
  });

  it('ENOSPC on the overlay filesystem: the writer gets ENOSPC, others go on, flushed data survives', async () => {
    const base = createPatternedImage(tmp.file('base.raw'), 64 * MiB, 8);
    const other = createRawImage(tmp.file('other.raw'), 4 * MiB);
    const small = tmpfs('small', '8m');
    const srv = await startServer(['--base', base, '--overlay-dir', small, '--min-free', '0', '--export', `other=${other}`]);
    const script =
      PRELUDE +
      `
import os
h = conn(URI + "vm1")
keep = os.urandom(1 << 20)
h.pwrite(keep, 0)
h.flush()
errs, off = [], 1 << 20
while off < (48 << 20) and not errs:
    e = err_of(lambda: h.pwrite(os.urandom(1 << 20), off))
    if e: errs.append(e)
    off += 1 << 20
if not errs:
    e = err_of(lambda: h.flush())
    if e: errs.append(e)
o = conn(URI + "other")
o.pwrite(b"other works", 0)
o.flush()
out({"errs": errs, "other": o.pread(11, 0).decode(), "keep": keep.hex()[:64], "keep_full": keep.hex()})
`;
    let r: { errs: string[]; other: string; keep_full: string };
    try {
      r = lastJson(await nbdPython(script, { URI: srv.uri('').replace(/\/$/, '/') }, 120_000));
      expect(r.errs).toEqual(['ENOSPC']);
      expect(r.other).toBe('other works');
      expect(srv.proc.exitCode).toBeNull();
    } finally {
      await srv.stop('SIGKILL');
    }
    const again = await startServer(['--base', base, '--overlay-dir', small, '--min-free', '0']);
    try {
      const got = lastJson(await nbdPython(PRELUDE + 'h = conn()\nout({"keep": h.pread(1 << 20, 0).hex()})\n', { URI: again.uri('vm1') }));
      expect(got.keep).toBe(r.keep_full);
    } finally {
      await again.stop();
    }
    report('faults: ENOSPC answered to the writer only; flushed 1 MiB intact after kill -9 and restart');
  }, 180_000);

  it('a read-only overlay filesystem: serve refuses to start with one line naming the directory (not a refusal per machine later)', async () => {
    const base = createPatternedImage(tmp.file('base2.raw'), 4 * MiB, 9);
    const fs = tmpfs('rofs', '16m');
    const srv0 = await startServer(['--base', base, '--overlay-dir', fs, '--min-free', '0']);
    await nbdPython(PRELUDE + 'h = conn()\nh.pwrite(b"x", 0)\nh.flush()\nh.shutdown()\n', { URI: srv0.uri('vm1') });
    await srv0.stop();
    execFileSync('mount', ['-o', 'remount,ro', fs]);
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--base', base, '--overlay-dir', fs, '--min-free', '0', '-p', '0'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`^cownbd: --overlay-dir '${fs}' is not writable \\(EROFS: read-only file system\\)`));
    expect(r.stdout).not.toMatch(/listening/);
  }, 60_000);

  it('a base deleted while served keeps serving open machines; a restart refuses with one line', async () => {
    const dir = tmp.file('del');
    mkdirSync(dir);
    const base = createPatternedImage(`${dir}/base.raw`, 4 * MiB, 10);
    const srv = await startServer(['--base', base, '--overlay-dir', `${dir}/ov`]);
    try {
      const r = lastJson(
        await nbdPython(
          PRELUDE +
            `
import os
h = conn(URI)
before = h.pread(4096, 8192)
os.unlink(BASE)
h.pwrite(b"still here", 100)
h.flush()
out({"same": h.pread(4096, 8192) == before, "w": h.pread(10, 100).decode()})
`,
          { URI: srv.uri('vm1'), BASE: base },
        ),
      );
      expect(r).toEqual({ same: true, w: 'still here' });
      expect(srv.proc.exitCode).toBeNull();
    } finally {
      await srv.stop();
    }
    const { spawnSync } = await import('node:child_process');
    const { CLI_PATH } = await import('../helpers/server.js');
    const restart = spawnSync(process.execPath, [CLI_PATH, 'serve', '--base', base, '--overlay-dir', `${dir}/ov`, '-p', '0'], { encoding: 'utf8', timeout: 20_000 });
    expect(restart.status).toBe(1);
    expect(restart.stderr.trim().split('\n')).toHaveLength(1);
    expect(restart.stderr).toContain(base);
  }, 60_000);
});
