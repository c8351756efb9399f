/**
 * contrib/systemd: the units pass `systemd-analyze verify` (unknown keys and bad values
 * are only warnings there, so any warning about our files fails the test), and the
 * socket/service pair is wired for socket activation: Accept=no, the service is the
 * socket's (same name), and nothing passes -p/-b/-U that the socket would override.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { makeTempDir } from '../helpers/images.js';
import { REPO_ROOT } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const DIR = path.join(REPO_ROOT, 'contrib', 'systemd');
const read = (f: string) => readFileSync(path.join(DIR, f), 'utf8');
const hasAnalyze = requireTool('systemd-analyze');

/** Active (uncommented) `Key=value` lines of a unit or environment file. */
function settings(text: string): Array<[string, string]> {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#') && !l.startsWith(';') && !l.startsWith('[') && l.includes('='))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as [string, string]);
}

function verify(dir: string, units: string[]): { status: number | null; problems: string[]; stderr: string } {
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...units.map((u) => path.join(dir, u))], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  // Only our units' lines: the host's own units may have their own warnings.
  const problems = r.stderr.split('\n').filter((l) => /cownbd\.(socket|service)/.test(l));
  return { status: r.status, problems, stderr: r.stderr };
}

describe('contrib/systemd units', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('socket and service are wired for socket activation', () => {
    const socket = settings(read('cownbd.socket'));
    const service = settings(read('cownbd.service'));
    expect(socket).toContainEqual(['Accept', 'no']);
    expect(socket.filter(([k]) => k === 'ListenStream').map(([, v]) => v)).toContain('127.0.0.1:10809');
    // Default pairing by name: cownbd.socket activates cownbd.service (no Service= needed).
    expect(socket.find(([k]) => k === 'Service')).toBeUndefined();
    const exec = service.find(([k]) => k === 'ExecStart')![1];
    expect(exec).toMatch(/^\/\S+\/node \/\S+\/cownbd\/dist\/cli\/main\.js serve\b/);
    expect(exec).not.toMatch(/\s-(p|b|U)\b|--port|--bind|--socket/);
    // The environment file fed to ExecStart does not set a listener either.
    for (const [k, v] of settings(read('cownbd.default'))) {
      if (k === 'COWNBD_OPTS') expect(v, 'COWNBD_OPTS').not.toMatch(/(^|\s)(-p|-b|-U|--port|--bind|--socket)(\s|=|$)/);
    }
  });

  it('the service is Type=notify without PATH lookups, and the socket filters peers', () => {
    const service = settings(read('cownbd.service'));
    const socket = settings(read('cownbd.socket'));
    expect(service).toContainEqual(['Type', 'notify']);
    // The READY=1 sender is systemd-notify, our child: NotifyAccess=main would drop it.
    expect(service).toContainEqual(['NotifyAccess', 'all']);
    const exec = service.find(([k]) => k === 'ExecStart')![1];
    expect(exec.startsWith('/')).toBe(true);
    expect(exec).not.toMatch(/\/usr\/bin\/env/);
    // AF_UNIX stays allowed: sd_notify and -U sockets need it.
    expect(service.find(([k]) => k === 'RestrictAddressFamilies')![1]).toMatch(/AF_UNIX/);
    expect(socket).toContainEqual(['IPAddressDeny', 'any']);
    expect(socket).toContainEqual(['IPAddressAllow', 'localhost']);
  });

  it('systemctl reload sends SIGHUP, and /run/cownbd exists under ProtectSystem=strict', () => {
    const service = settings(read('cownbd.service'));
    expect(service.find(([k]) => k === 'ExecReload')?.[1]).toMatch(/^\/bin\/kill -HUP \$MAINPID$/);
    expect(service).toContainEqual(['ProtectSystem', 'strict']);
    expect(service).toContainEqual(['RuntimeDirectory', 'cownbd']);
  });

  it.runIf(hasAnalyze)('pass systemd-analyze verify without warnings', () => {
    const dir = tmp.file('units');
    spawnSync('mkdir', ['-p', dir]);
    for (const f of ['cownbd.socket', 'cownbd.service']) copyFileSync(path.join(DIR, f), path.join(dir, f));
    const r = verify(dir, ['cownbd.socket', 'cownbd.service']);
    expect(r.problems, r.stderr).toEqual([]);
    expect(r.status, r.stderr).toBe(0);
  });

  it.runIf(hasAnalyze)('would notice a broken unit (negative control)', () => {
    const dir = tmp.file('broken');
    spawnSync('mkdir', ['-p', dir]);
    copyFileSync(path.join(DIR, 'cownbd.service'), path.join(dir, 'cownbd.service'));
    writeFileSync(path.join(dir, 'cownbd.socket'), read('cownbd.socket').replace(/^Accept=no$/m, 'Accept=perhaps\nListenBogus=1'));
    const r = verify(dir, ['cownbd.socket', 'cownbd.service']);
    expect(r.problems.join('\n')).toMatch(/perhaps|ListenBogus/);
  });
});
