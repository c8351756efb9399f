/**
 * `serve`/`demo` process behaviour operators rely on (nbdkit habits): captive mode
 * (--run), --exit-with-parent (also for `npm start`), --pidfile, --print-uri, every
 * export's URI, wildcard binds, --log-level / COWNBD_LOG_LEVEL, the process title, and
 * the info-level log lines (connection open/close with totals, a refused export name
 * once, a missing native addon once).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, REPO_ROOT, assertBuilt, runNbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { resetCommand } from '../../src/cli/demo.js';

const MiB = 1024 * 1024;
const hasNbdinfo = requireTool('nbdinfo');
const hasQemuIo = requireTool('qemu-io');
const hasNbd = requireNbdPython();
const hasNpm = requireTool('npm');

interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Run the CLI to completion (async: the test's event loop keeps running). */
function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 30_000): Promise<Ran> {
  assertBuilt();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI_PATH, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('close', (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** pino JSON lines of a server's stderr. */
function logLines(stderr: string): Array<Record<string, unknown>> {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('serve: captive mode, pidfile, parent watch', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it.runIf(hasNbdinfo && hasQemuIo)('--run gets $uri $nbd $port $unixsocket $exportname, the server stops when CMD exits, and cownbd exits with its status', async () => {
    const img = createRawImage(tmp.file('captive.raw'), 2 * MiB);
    const cmd = [
      'nbdinfo --size "$uri"',
      `qemu-io -f raw -c 'write -P 0x5a 0 4k' "$nbd" >/dev/null`,
      'echo "port=$port sock=[$unixsocket] name=$exportname"',
      'exit 7',
    ].join(' && ');
    const r = await runCli(['serve', '-p', '0', '-n', 'disk', img, '--log-level', 'info', '--run', cmd]);
    expect(r.status, r.stderr).toBe(7);
    expect(r.stdout).toContain(`${2 * MiB}\n`);
    expect(r.stdout).toMatch(/^port=\d+ sock=\[\] name=disk$/m);
    // The write went through $nbd (qemu's legacy syntax with the export name).
    expect(readFileSync(img).subarray(0, 4096).every((b) => b === 0x5a)).toBe(true);
    expect(logLines(r.stderr).some((l) => /--run command exited with status 7/.test(String(l.reason)))).toBe(true);
  });

  it.runIf(hasNbdinfo)('--run over a Unix socket: $unixsocket set, $port empty, status 0 passes through', async () => {
    const img = createRawImage(tmp.file('captive-unix.raw'), MiB);
    const sock = tmp.file('captive.sock');
    const r = await runCli(['serve', '-U', sock, img, '--run', 'test -z "$port" && test "$unixsocket" = "' + sock + '" && nbdinfo --size "$uri"']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`${MiB}\n`);
    expect(existsSync(sock)).toBe(false); // stopped and cleaned up
  });

  it('--run: a command killed by a signal makes cownbd exit 128+signal, like a shell', async () => {
    const img = createRawImage(tmp.file('captive-sig.raw'), MiB);
    const r = await runCli(['serve', '-p', '0', img, '--run', 'kill -TERM $$']);
    expect(r.status).toBe(128 + os.constants.signals.SIGTERM);
  });

  it('--pidfile holds the pid while serving and is removed at exit; --exit-with-parent stops when the parent dies', async () => {
    assertBuilt();
    const img = createRawImage(tmp.file('parent.raw'), MiB);
    const pidfile = tmp.file('cownbd.pid');
    // A parent that starts the server and is then SIGKILLed (it cannot forward anything).
    const parent = spawn('/bin/sh', ['-c', `"${process.execPath}" "${CLI_PATH}" serve -p 0 --exit-with-parent --pidfile "${pidfile}" "${img}" >/dev/null 2>&1 & wait`], {
      stdio: 'ignore',
    });
    await waitFor('the pidfile', () => existsSync(pidfile));
    const pid = Number(readFileSync(pidfile, 'utf8').trim());
    expect(pid).toBeGreaterThan(1);
    expect(alive(pid)).toBe(true);
    expect(readFileSync(`/proc/${pid}/comm`, 'utf8').trim()).toBe('cownbd');
    parent.kill('SIGKILL');
    await waitFor('the server to exit after its parent died', () => !alive(pid), 10_000);
    expect(existsSync(pidfile)).toBe(false);
  });

  it.runIf(hasNpm)('npm start: killing npm stops the demo server (the script execs node with --exit-with-parent)', async () => {
    const scripts = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
    expect(scripts.start).toBe('exec bash scripts/start.sh');
    // Run the real start command and script through real npm, in a project that has the
    // built dist/ and no sources: start.sh must not rebuild (npm install built dist/ once;
    // there is no build script here, so a rebuild would fail the start).
    const proj = tmp.file('npm-start');
    mkdirSync(proj);
    writeFileSync(path.join(proj, 'package.json'), JSON.stringify({ name: 'start-probe', private: true, scripts: { start: scripts.start } }));
    utimesSync(path.join(proj, 'package.json'), new Date(0), new Date(0));
    symlinkSync(path.join(REPO_ROOT, 'scripts'), path.join(proj, 'scripts'));
    symlinkSync(path.join(REPO_ROOT, 'dist'), path.join(proj, 'dist'));
    symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(proj, 'node_modules'));
    const pidfile = tmp.file('demo.pid');
    const npm = spawn('npm', ['start', '--', '-p', '0', '--pidfile', pidfile], {
      cwd: proj,
      env: { ...process.env, XDG_CACHE_HOME: tmp.file('npm-cache-home') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    npm.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    npm.stderr.resume();
    await waitFor('the demo banner', () => /press Ctrl-C/.test(out), 30_000);
    const pid = Number(readFileSync(pidfile, 'utf8').trim());
    expect(out).toContain('`npm start -- --reset`');
    expect(out).not.toContain('cownbd demo --reset');
    npm.kill('SIGKILL');
    await waitFor('the demo to exit after npm died', () => !alive(pid), 10_000);
  });

  it('the demo banner names a reset command that works where the user is', () => {
    expect(resetCommand({ npm_lifecycle_event: 'start' })).toBe('npm start -- --reset');
    expect(resetCommand({})).toBe('cownbd demo --reset');
  });
});

describe('serve --run: captive mode prints nothing of its own', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it.runIf(requireTool('nbdinfo'))('$(cownbd serve --run ...) captures only what CMD prints; stderr stays empty unless asked', () => {
    const img = createRawImage(tmp.file('captive.raw'), 3 * MiB);
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '-p', '0', '--run', 'nbdinfo --size "$uri"', img], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${3 * MiB}\n`);
    expect(r.stderr).toBe('');
    // A level asked for is honoured (and still nothing on stdout but CMD's).
    const verbose = spawnSync(process.execPath, [CLI_PATH, 'serve', '-p', '0', '--log-level', 'info', '--run', 'nbdinfo --size "$uri"', img], { encoding: 'utf8', timeout: 30_000 });
    expect(verbose.stdout).toBe(`${3 * MiB}\n`);
    expect(verbose.stderr).toMatch(/"msg":"captive mode: running command"/);
  });
});

describe('serve: what it prints', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('prints every export\'s URI; --print-uri prints bare URIs only', async () => {
    const a = createRawImage(tmp.file('a.raw'), MiB);
    const b = createRawImage(tmp.file('b.raw'), MiB);
    const srv = await startServer(['-n', 'a', a, '--export', `b c=${b}`]);
    try {
      expect(srv.stdout()).toContain(`cownbd: export at nbd://127.0.0.1:${srv.port}/b%20c\n`);
    } finally {
      await srv.stop();
    }
    const r = await runCli(['serve', '-p', '0', '-n', 'a', a, '--export', `b=${b}`, '--print-uri', '--run', 'true']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/a\nnbd:\/\/127\.0\.0\.1:\d+\/b\n$/);
  });

  it('a wildcard bind prints a URI with this host name (and warns), not 0.0.0.0', async () => {
    const img = createRawImage(tmp.file('wild.raw'), MiB);
    // Under --run cownbd prints its URIs only when --print-uri asks.
    const r = await runCli(['serve', '-b', '0.0.0.0', '-p', '0', img, '--log-level', 'info', '--print-uri', '--run', 'true']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^nbd://${os.hostname()}:\\d+/$`, 'm'));
    expect(r.stdout).not.toContain('0.0.0.0');
    expect(logLines(r.stderr).some((l) => l.msg === 'listening on every interface: NBD has no authentication here; firewall the port')).toBe(true);
  });

  it.runIf(hasNbdinfo)('--log-level comes from COWNBD_LOG_LEVEL too; an invalid level is refused naming it; --foreground is accepted', async () => {
    const img = createRawImage(tmp.file('lvl.raw'), MiB);
    const debug = await runCli(['serve', '-p', '0', '--foreground', img, '--run', 'nbdinfo --size "$uri"'], { COWNBD_LOG_LEVEL: 'debug' });
    expect(debug.status, debug.stderr).toBe(0);
    expect(logLines(debug.stderr).some((l) => l.level === 20)).toBe(true);
    const quiet = await runCli(['serve', '-p', '0', img, '--run', 'nbdinfo --size "$uri"'], { COWNBD_LOG_LEVEL: 'error' });
    expect(quiet.stderr).toBe('');
    // The command line wins over the environment.
    const cliWins = await runCli(['serve', '-p', '0', img, '--log-level', 'error', '--run', 'nbdinfo --size "$uri"'], { COWNBD_LOG_LEVEL: 'debug' });
    expect(cliWins.stderr).toBe('');
    for (const env of [{}, { COWNBD_LOG_LEVEL: 'loud' }] as Array<Record<string, string>>) {
      const bad = await runCli(['serve', '-p', '0', img, ...('COWNBD_LOG_LEVEL' in env ? [] : ['--log-level', 'loud'])], env);
      expect(bad.status).toBe(1);
      expect(bad.stderr).toMatch(/log-level.*'loud'.*is invalid.*trace, debug, info/);
      if ('COWNBD_LOG_LEVEL' in env) expect(bad.stderr).toContain('COWNBD_LOG_LEVEL');
    }
  });

  it('logs once, at start, that the native addon is missing', async () => {
    const img = createRawImage(tmp.file('nonative.raw'), MiB);
    const r = await runCli(['serve', '-p', '0', img, '--run', 'true'], { COWNBD_NO_NATIVE: '1' });
    const lines = logLines(r.stderr).filter((l) => /native addon not loaded/.test(String(l.msg)));
    expect(lines).toHaveLength(1);
    expect(lines[0]!.reason).toMatch(/COWNBD_NO_NATIVE/);
    const withAddon = await runCli(['serve', '-p', '0', img, '--run', 'true']);
    expect(withAddon.stderr).not.toMatch(/native addon not loaded/);
  });
});

describe('serve: connection log lines', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it.runIf(hasQemuIo)('one info line when a connection opens (peer, export) and one when it closes (duration, bytes, requests, errors)', async () => {
    const img = createRawImage(tmp.file('log.raw'), MiB);
    const srv = await startServer(['-n', 'vm', img]);
    try {
      const q = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write 0 64k', '-c', 'read 0 8k', srv.uri('vm')], { encoding: 'utf8' });
      expect(q.status, q.stderr + q.stdout).toBe(0);
      await waitFor('the close line', () => /connection closed/.test(srv.stderr()));
    } finally {
      await srv.stop();
    }
    const log = logLines(srv.stderr());
    const opened = log.filter((l) => l.msg === 'connection opened');
    const closed = log.filter((l) => l.msg === 'connection closed');
    expect(opened).toHaveLength(1);
    expect(opened[0]).toMatchObject({ level: 30, export: 'vm', readOnly: false });
    expect(opened[0]!.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(closed).toHaveLength(1);
    expect(closed[0]).toMatchObject({ level: 30, export: 'vm', bytesWritten: 64 * 1024, bytesRead: 8 * 1024 });
    expect(closed[0]!.requests).toBeGreaterThanOrEqual(2);
    expect(closed[0]!.errors).toBe(0);
    expect(closed[0]!.durationMs).toBeGreaterThanOrEqual(0);
  });

  it.runIf(hasNbd)('a refused export name is logged once per connection, with the reason', async () => {
    const img = createRawImage(tmp.file('refused.raw'), MiB);
    const base = createRawImage(tmp.file('refused-base.raw'), MiB);
    const vms = tmp.file('vms');
    mkdirSync(vms);
    for (const [args, name, reason] of [
      [['-n', 'vm', img], 'nope', 'no such export'],
      [['--base', base, '--overlay-dir', vms], '../escape', 'only letters, digits'],
    ] as const) {
      const srv = await startServer([...args]);
      try {
        const r = await runNbdPython(
          `
import nbd
h = nbd.NBD(); h.set_export_name(NAME); h.set_opt_mode(True)
h.connect_tcp("127.0.0.1", str(PORT))
for _ in range(3):
    try:
        h.opt_info()
    except nbd.Error as e:
        pass
try:
    h.opt_go()
    print("CONNECTED")
except nbd.Error as e:
    print("REFUSED")
`,
          { NAME: name, PORT: srv.port },
        );
        expect(r.stdout.trim(), r.stderr).toBe('REFUSED');
        await waitFor('the log line', () => /refused export name/.test(srv.stderr()));
      } finally {
        await srv.stop();
      }
      const refused = logLines(srv.stderr()).filter((l) => l.msg === 'refused export name');
      expect(refused, srv.stderr()).toHaveLength(1);
      expect(String(refused[0]!.reason)).toContain(reason);
      expect(refused[0]!.export).toBe(name);
    }
  });

  it.runIf(hasNbd)('a listing is quiet: INFO about an absent export (libnbd probes "" when listing) logs no warning', async () => {
    const base = createRawImage(tmp.file('quiet-base.raw'), MiB);
    const vms = tmp.file('quiet-vms');
    mkdirSync(vms);
    const srv = await startServer(['--base', base, '--overlay-dir', vms]);
    try {
      const r = await runNbdPython(
        `
import nbd
h = nbd.NBD(); h.set_export_name(""); h.set_opt_mode(True)
h.connect_tcp("127.0.0.1", str(PORT))
h.opt_list(lambda name, desc: 0)
try:
    h.opt_info()
    print("FOUND")
except nbd.Error:
    print("ABSENT")
h.opt_abort()
`,
        { PORT: srv.port },
      );
      expect(r.stdout.trim(), r.stderr).toBe('ABSENT');
    } finally {
      await srv.stop();
    }
    const warnings = logLines(srv.stderr()).filter((l) => Number(l.level) >= 40);
    expect(warnings, srv.stderr()).toEqual([]);
  });
});
