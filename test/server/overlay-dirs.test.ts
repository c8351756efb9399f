/**
 * A wrong overlay directory is caught at start, in one line (it used to show up only when a
 * machine connected: "server has no export named 'vm3'" and a stack trace; a mistyped
 * directory was created silently, so machines booted blank disks):
 * a missing --overlay-dir / --ephemeral-dir is refused unless --create-dirs (or the config
 * file's create-dir) says to create it; an unwritable one is refused; the default
 * ephemeral directory is created as before.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, assertBuilt, startServer } from '../helpers/server.js';

function serve(args: string[]): { status: number | null; stdout: string; stderr: string } {
  assertBuilt();
  const r = spawnSync(process.execPath, [CLI_PATH, 'serve', ...args, '-p', '0', '--run', 'true'], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('overlay directories are checked at start', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const base = createRawImage(tmp.file('golden.img'), 1 << 20);

  it('a missing --overlay-dir is refused with one line; --create-dirs creates it', () => {
    const dir = tmp.file('vms-typo');
    const r = serve(['--base', base, '--overlay-dir', dir]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`^cownbd: --overlay-dir '${dir}' does not exist: create it \\(mkdir -p '${dir}'\\) or pass --create-dirs`));
    expect(existsSync(dir)).toBe(false);
    const ok = serve(['--base', base, '--overlay-dir', dir, '--create-dirs']);
    expect(ok.status, ok.stderr).toBe(0);
    expect(existsSync(dir)).toBe(true);
  });

  it('a missing --ephemeral-dir is refused the same way; the default one is created', () => {
    const dir = tmp.file('eph-typo');
    const r = serve(['--ephemeral', base, '--ephemeral-dir', dir]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^cownbd: --ephemeral-dir '.*eph-typo' does not exist/);
    const dflt = serve(['--ephemeral', base]);
    expect(dflt.status, dflt.stderr).toBe(0);
  });

  it('an unwritable directory is refused at start (not per machine later)', () => {
    const dir = tmp.file('ro-vms');
    mkdirSync(dir);
    if (process.getuid?.() === 0) {
      // root writes through mode bits: an immutable directory is what refuses root.
      const chattr = spawnSync('chattr', ['+i', dir]);
      if (chattr.status !== 0) {
        // Filesystems without attributes (tmpfs): the read-only mount case is in test/campaign/faults.test.ts.
        expect(chattr.status).not.toBe(0);
        return;
      }
    } else chmodSync(dir, 0o500);
    try {
      const r = serve(['--base', base, '--overlay-dir', dir]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^cownbd: --overlay-dir '${dir}' is not writable \\((EPERM|EACCES)\\): overlays are created there`));
    } finally {
      if (process.getuid?.() === 0) spawnSync('chattr', ['-i', dir]);
      else chmodSync(dir, 0o700);
    }
  });

  it('-n names the machine the printed URI and $uri point at (it was always /vm1)', () => {
    const dir = tmp.file('named-vms');
    mkdirSync(dir);
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--base', base, '--overlay-dir', dir, '-n', 'vm7', '-p', '0', '--run', 'echo "run:$uri"'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^run:nbd:\/\/127\.0\.0\.1:\d+\/vm7$/m);
    const dflt = spawnSync(process.execPath, [CLI_PATH, 'serve', '--base', base, '--overlay-dir', dir, '-p', '0', '--run', 'echo "run:$uri"'], { encoding: 'utf8', timeout: 30_000 });
    expect(dflt.stdout).toMatch(/^run:nbd:\/\/127\.0\.0\.1:\d+\/vm1$/m);
  });

  it('a config file creates its directory only with create-dir = true', async () => {
    const dir = tmp.file('cfg-vms');
    const cfg = tmp.file('c.toml');
    writeFileSync(cfg, `[overlays]\nbase = "${base}"\ndir = "${dir}"\n`);
    const r = serve(['--config', cfg]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--overlay-dir '.*cfg-vms' does not exist/);
    writeFileSync(cfg, `[overlays]\nbase = "${base}"\ndir = "${dir}"\ncreate-dir = true\n`);
    const srv = await startServer(['--config', cfg], { strictDirs: true });
    try {
      expect(existsSync(dir)).toBe(true);
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });
});
