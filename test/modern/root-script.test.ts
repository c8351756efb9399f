/**
 * scripts/modern-root.sh decides whether a cached root may be used from its stamp alone
 * (docs/modern-clients.md): a root that was never finished has none, a root built for
 * another package list has a different one. These checks run the script's --status on
 * copies of the real stamp (no network, no build); scripts/modern-run.sh must refuse an
 * unstamped root instead of running tools from a half-built one, must keep the cached root
 * read-only, and must leave no mount behind on the host, even when its tool is killed.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { MODERN_ROOT, MODERN_SUITE, modern, requireModernTool, startModern } from '../helpers/modern.js';
import { REPO_ROOT } from '../helpers/server.js';

const SCRIPT = path.join(REPO_ROOT, 'scripts', 'modern-root.sh');
const RUNNER = path.join(REPO_ROOT, 'scripts', 'modern-run.sh');
const STAMP = '.cownbd-root-stamp';
const hasRoot = requireModernTool();

function status(root: string): string {
  return execFileSync('bash', [SCRIPT, '--status'], { env: { ...process.env, COWNBD_MODERN_ROOT: root }, encoding: 'utf8' }).trim();
}

describe.runIf(hasRoot)('scripts/modern-root.sh: which cached roots it trusts', () => {
  let tmp: TempDir;
  let stamp: string;
  beforeAll(() => {
    tmp = makeTempDir();
    stamp = readFileSync(path.join(MODERN_ROOT, STAMP), 'utf8');
  });
  afterAll(() => tmp?.cleanup());

  it('the cached root is current, and its stamp records suite, mirror and package list', () => {
    expect(status(MODERN_ROOT)).toBe('current');
    expect(stamp).toMatch(new RegExp(`^suite=${MODERN_SUITE}\\nmirror=\\S+\\npackages=.*\\blibnbd-bin\\b.*\\bqemu-utils\\b.*\\bnbd-client\\b`));
  });

  it('a missing root and a root without a stamp (an interrupted build) are "absent"', () => {
    expect(status(tmp.file('nothing-here'))).toBe('absent');
    const half = tmp.file('half');
    mkdirSync(path.join(half, 'usr', 'bin'), { recursive: true });
    expect(status(half)).toBe('absent');
  });

  it('a stamp with the same text is "current"; another package list or suite is "stale"', () => {
    const same = tmp.file('same');
    mkdirSync(same);
    writeFileSync(path.join(same, STAMP), stamp);
    expect(status(same)).toBe('current');
    const fewer = tmp.file('fewer');
    mkdirSync(fewer);
    writeFileSync(path.join(fewer, STAMP), stamp.replace(/ fio\b/, ''));
    expect(status(fewer)).toBe('stale');
    const sid = tmp.file('sid');
    mkdirSync(sid);
    writeFileSync(path.join(sid, STAMP), stamp.replace(`suite=${MODERN_SUITE}`, 'suite=another-suite'));
    expect(status(sid)).toBe('stale');
  });

  it('modern-run.sh refuses an unstamped root and names it', () => {
    const half = tmp.file('half-run');
    mkdirSync(half);
    const r = spawnSync('bash', [RUNNER, 'true'], { env: { ...process.env, COWNBD_MODERN_ROOT: half }, encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`no modern root at ${half}`);
  });
});

/** Host mount points at or below the cached root (the runner's mounts live in its own namespace). */
function hostMountsUnderRoot(): string[] {
  const out = execFileSync('findmnt', ['-rno', 'TARGET'], { encoding: 'utf8' });
  return out.split('\n').filter((t) => t === MODERN_ROOT || t.startsWith(`${MODERN_ROOT}/`));
}

describe.runIf(hasRoot)('scripts/modern-run.sh: a sealed, read-only chroot', () => {
  it('the cached root is read-only to the tools, and /tmp is the host\'s', async () => {
    const tmp = makeTempDir();
    try {
      const r = await modern('sh', ['-c', `touch /usr/bin/cownbd-probe; echo $?; echo inside > ${tmp.file('seen')}`]);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/Read-only file system/);
      expect(r.stdout.trim()).not.toBe('0');
      expect(readFileSync(tmp.file('seen'), 'utf8')).toBe('inside\n');
    } finally {
      tmp.cleanup();
    }
  });

  it('a tool killed with SIGKILL leaves no mount on the host', async () => {
    expect(hostMountsUnderRoot()).toEqual([]);
    const t = startModern('sleep', ['60']);
    // Wait until the tool runs inside the chroot (its /proc/PID/root is the cached root).
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const root = spawnSync('readlink', [`/proc/${t.proc.pid}/root`], { encoding: 'utf8' }).stdout.trim();
      if (root === MODERN_ROOT) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(spawnSync('readlink', [`/proc/${t.proc.pid}/root`], { encoding: 'utf8' }).stdout.trim()).toBe(MODERN_ROOT);
    t.proc.kill('SIGKILL');
    await t.stop();
    expect(hostMountsUnderRoot()).toEqual([]);
  });
});
