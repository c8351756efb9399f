/**
 * The `serve` and `demo` command lines: argument validation, listening lines, and the
 * demo disk (created in $XDG_CACHE_HOME, served with ready-to-paste client commands).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, assertBuilt, startServer } from '../helpers/server.js';
import { RawClient } from '../helpers/nbd-fixtures.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;

function cli(args: string[]) {
  assertBuilt();
  return spawnSync(process.execPath, [CLI_PATH, ...args], { encoding: 'utf8', timeout: 20_000 });
}

describe('cownbd CLI', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('lists serve and demo in --help', () => {
    const r = cli(['--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/serve/);
    expect(r.stdout).toMatch(/demo/);
  });

  it.each([
    [['serve', '/nonexistent/disk.img', '-p', '0'], /cannot access \/nonexistent\/disk.img/],
    [['serve', '-p', '0'], /nothing to serve/],
    [['serve', 'x.img', '-p', '70000'], /port must be an integer 0-65535 \(got "70000"\)/],
    [['serve', '--export', 'nameonly', '-p', '0'], /--export must be NAME=PATH/],
    [['serve', '--export', 'a=b.img,bogus', '-p', '0'], /unknown option "bogus"/],
    [['serve', '--export', 'a=b.img,format=qcow2', '-p', '0'], /format must be one of raw, cow, add-cow \(got "qcow2"\)/],
  ])('rejects bad arguments: %j', (args, message) => {
    const r = cli(args);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(message);
  });

  it('refuses two exports with the same name', () => {
    const img = createRawImage(tmp.file('dup.raw'), MiB);
    const r = cli(['serve', img, '--export', `=${img}`, '-p', '0']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/export name "" is used twice/);
  });

  it('prints one listening line with the real port and serves several exports in one process', async () => {
    const a = createRawImage(tmp.file('a.raw'), MiB);
    const b = createRawImage(tmp.file('b.raw'), 2 * MiB);
    const srv = await startServer(['-n', 'a', a, '--export', `b=${b},format=raw`]);
    try {
      expect(srv.stdout().match(/cownbd: listening on /g)).toHaveLength(1);
      expect(srv.uris[0]).toBe(`nbd://127.0.0.1:${srv.port}/a`);
      for (const [name, size] of [['a', MiB], ['b', 2 * MiB]] as const) {
        const c = await RawClient.connect({ port: srv.port! });
        expect((await c.handshake({ name })).size).toBe(BigInt(size));
        c.close();
      }
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('demo creates its disk in $XDG_CACHE_HOME and prints the URI and client commands', async () => {
    const cache = tmp.file('cache');
    const proc = spawn(process.execPath, [CLI_PATH, 'demo', '-p', '0'], {
      env: { ...process.env, XDG_CACHE_HOME: cache },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    try {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`demo did not start: ${out}`)), 20_000);
        proc.stdout.setEncoding('utf8').on('data', (d: string) => {
          out += d;
          if (/press Ctrl-C/.test(out)) {
            clearTimeout(t);
            resolve();
          }
        });
        proc.once('exit', () => reject(new Error(`demo exited: ${out}`)));
      });
      const m = /cownbd: listening on nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(out);
      expect(m).not.toBeNull();
      const port = Number(m![1]);
      expect(out).toContain(`nbdinfo nbd://127.0.0.1:${port}`);
      expect(out).toContain(`qemu-img info nbd://127.0.0.1:${port}`);
      const image = path.join(cache, 'cownbd', 'demo', 'demo-base.raw');
      expect(existsSync(image)).toBe(true);
      expect(statSync(image).size).toBe(64 * MiB);
      const c = await RawClient.connect({ port });
      expect((await c.handshake()).size).toBe(BigInt(64 * MiB));
      c.close();
      if (requireTool('nbdinfo')) {
        const info = spawnSync('nbdinfo', ['--size', `nbd://127.0.0.1:${port}`], { encoding: 'utf8', timeout: 20_000 });
        expect(info.stdout.trim()).toBe(String(64 * MiB));
      }
    } finally {
      proc.kill('SIGTERM');
      await new Promise((r) => (proc.exitCode !== null ? r(null) : proc.once('exit', r)));
    }
    expect(proc.exitCode).toBe(0);
  });
});
