/**
 * `serve --background` (qemu-nbd --fork's readiness): the command returns only once the
 * server listens, so a script's next line can connect without a sleep; it returns with its
 * stdout closed (a `$(…)` capture does not wait for the server); a server that cannot start
 * makes the command fail with its one-line reason.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, pattern } from '../helpers/images.js';
import { CLI_PATH, assertBuilt } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe.runIf(requireTool('nbdinfo'))('serve --background', () => {
  const tmp = makeTempDir();
  const pids: number[] = [];
  afterAll(() => {
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    tmp.cleanup();
  });

  it('returns once listening: the very next command connects; stdout is closed; SIGTERM stops it and removes the pidfile', async () => {
    assertBuilt();
    const img = createRawImage(tmp.file('bg.raw'), 2 * MiB, [[0, 4096]]);
    const pidfile = tmp.file('bg.pid');
    // spawnSync waits for stdout to close: a server holding the pipe would hang this call.
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--background', '-p', '0', '--pidfile', pidfile, img], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    const uri = /^cownbd: listening on (\S+)$/m.exec(r.stdout)?.[1];
    expect(uri, r.stdout).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/$/);
    const pid = Number(/^cownbd: running in the background as pid (\d+)$/m.exec(r.stdout)?.[1]);
    pids.push(pid);
    expect(Number(readFileSync(pidfile, 'utf8').trim())).toBe(pid);
    // No sleep: the server was ready before the command returned.
    const size = spawnSync('nbdinfo', ['--size', uri!], { encoding: 'utf8', timeout: 30_000 });
    expect(size.stdout.trim(), size.stderr).toBe(String(2 * MiB));
    const read = spawnSync('nbdcopy', [uri!, '-'], { timeout: 30_000 });
    expect(read.stdout.subarray(0, 4096).equals(pattern(0, 4096))).toBe(true);
    process.kill(pid, 'SIGTERM');
    await expect.poll(() => alive(pid), { timeout: 10_000 }).toBe(false);
    expect(existsSync(pidfile)).toBe(false);
  });

  it('a server that cannot start fails the command with its one-line reason', () => {
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--background', '-p', '0', tmp.file('missing.raw')], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Could not open '.*missing\.raw': No such file or directory/);
    expect(r.stdout).not.toMatch(/running in the background/);
  });

  it('--background with --run is refused', () => {
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--background', '-p', '0', '--run', 'true', tmp.file('bg.raw')], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--background and --run exclude each other/);
  });
});
