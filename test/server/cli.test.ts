/**
 * The `serve` command line: argument validation, one-line operator errors (naming the
 * file, status 1, no stack trace), --ignore-mtime, listening lines, and systemd socket
 * activation (sockets inherited as fd 3.., LISTEN_FDS/LISTEN_PID) — proven both with a
 * socket pre-bound by the test and with libnbd's own socket activation
 * (`nbdinfo -- [ CMD ]`, connect_systemd_socket_activation). The demo: demo.test.ts.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, renameSync, utimesSync } from 'node:fs';
import net from 'node:net';
import { createCow } from '../../src/formats/cow/index.js';
import { SD_LISTEN_FDS_START, takeSystemdListenFds } from '../../src/cli/serve-command.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, assertBuilt, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { RawClient } from '../helpers/nbd-fixtures.js';
import { requireTool } from '../helpers/tools.js';

const hasNbd = requireNbdPython();
const hasNbdinfo = requireTool('nbdinfo');

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
    [['serve', '/nonexistent/disk.img', '-p', '0'], /Could not open '\/nonexistent\/disk.img': No such file or directory/],
    [['serve', '-p', '0'], /nothing to serve/],
    [['serve', '--base', '/tmp/golden.img', '-p', '0'], /--base \/tmp\/golden\.img is a golden base, not an export: add --overlay-dir DIR .* or --ephemeral/],
    [['serve', 'x.img', '-p', '70000'], /port must be an integer 0-65535 \(got "70000"\)/],
    [['serve', '--export', 'nameonly', '-p', '0'], /--export must be NAME=PATH/],
    [['serve', '--export', 'a=b.img,bogus', '-p', '0'], /unknown option "bogus"/],
    [['serve', '--export', 'a=b.img,format=vmdk', '-p', '0'], /format must be one of raw, cow, add-cow, qcow2 \(got "vmdk"\)/],
  ])('rejects bad arguments: %j', (args, message) => {
    const r = cli(args);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(message);
  });

  it('serve --help is grouped (as nbdkit and qemu-img are) and ends with examples', () => {
    const r = cli(['serve', '--help']);
    expect(r.status).toBe(0);
    const headings = r.stdout.split('\n').filter((l) => /^[A-Z].*:$/.test(l));
    expect(headings).toEqual(['Arguments:', 'Listening:', 'Exports:', 'Overlays (per machine, per connection):', 'Image files:', 'Operating:', 'Security and limits:', 'Object storage (s3:// images):', 'Options:', 'Examples:']);
    expect(r.stdout).toMatch(/Examples:\n {2}cownbd serve vm1\.cow/);
  });

  it('serve --help shows sizes as sizes (--min-free default 1GiB, not 1073741824)', () => {
    const r = cli(['serve', '--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).not.toMatch(/1073741824/);
    expect(r.stdout.replace(/\s+/g, ' ')).toMatch(/--min-free <size> .*\(default: 1GiB\)/);
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

  it('exits 1 with one line naming the port when it cannot listen', async () => {
    const img = createRawImage(tmp.file('busy.raw'), MiB);
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const r = cli(['serve', img, '-p', String(port)]);
      expect(r.status).toBe(1);
      // The exports opened fine (a JSON log line says so); the error itself is one human line.
      const human = r.stderr.split('\n').filter((l) => l && !l.startsWith('{'));
      expect(human, r.stderr).toHaveLength(1);
      expect(human[0]).toMatch(new RegExp(`^cownbd: cannot listen on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
    } finally {
      blocker.close();
    }
  });
});

describe('serve: cow backing checks and --ignore-mtime', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('refuses a cow whose backing mtime changed in one line naming both files; --ignore-mtime serves it', async () => {
    const base = createRawImage(tmp.file('base.raw'), 2 * MiB, [[0, 2 * MiB]], 7);
    const overlay = tmp.file('vm.cow');
    await createCow(overlay, { backingFile: base });
    const t = new Date(Date.now() - 86_400_000);
    utimesSync(base, t, t); // "touched": same content, other mtime

    const r = cli(['serve', overlay, '-p', '0']);
    expect(r.status).toBe(1);
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines, r.stderr).toHaveLength(1); // one line, no stack trace, no log noise
    expect(lines[0]).toMatch(/^cownbd: export "": .*vm\.cow.*: mtime mismatch \(\d+ vs \d+\) of COW header vs backing file ".*base\.raw"/);
    expect(lines[0]).toMatch(/--ignore-mtime/);
    expect(r.stdout).not.toMatch(/listening/);

    const srv = await startServer([overlay, '--ignore-mtime']);
    try {
      const c = await RawClient.connect({ port: srv.port! });
      expect((await c.handshake()).size).toBe(BigInt(2 * MiB));
      c.close();
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('names the export and file when a cow backing file is missing', async () => {
    const base = createRawImage(tmp.file('gone.raw'), MiB);
    const overlay = tmp.file('orphan.cow');
    await createCow(overlay, { backingFile: base });
    const r0 = spawnSync('rm', [base]);
    expect(r0.status).toBe(0);
    const r = cli(['serve', '--export', `vm=${overlay}`, '-p', '0']);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^cownbd: export "vm"\W.*orphan\.cow.*: .*gone\.raw/);
  });
});

/** Spawn `cownbd serve ARGS` with `fds` as fd 3.. and LISTEN_FDS/LISTEN_PID set like systemd does. */
function spawnActivated(fds: number[], args: string[], env: Record<string, string> = {}): ChildProcess {
  assertBuilt();
  // The pid is only known in the child: a shell sets LISTEN_PID=$$ and execs node (same pid).
  return spawn('sh', ['-c', 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', 'sh', process.execPath, CLI_PATH, 'serve', ...args], {
    stdio: ['ignore', 'pipe', 'pipe', ...fds],
    env: { ...process.env, LISTEN_FDS: String(fds.length), ...env },
  });
}

async function waitForLines(proc: ChildProcess, n: number): Promise<{ uris: string[]; stderr: () => string }> {
  let out = '';
  let err = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const uris: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no listening lines: ${out}\n${err}`)), 20_000);
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      uris.length = 0;
      for (const m of out.matchAll(/^cownbd: listening on (\S+)$/gm)) uris.push(m[1]!);
      if (uris.length >= n) {
        clearTimeout(t);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`server exited (${code}): ${out}\n${err}`));
    });
  });
  return { uris, stderr: () => err };
}

async function stopProc(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  proc.kill('SIGTERM');
  const code = await exited;
  clearTimeout(timer);
  return code;
}

function listeningFd(server: net.Server): number {
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('no fd on the listening handle');
  return fd;
}

describe('serve: systemd socket activation', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('takeSystemdListenFds follows sd_listen_fds: pid must match, variables are always removed', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: '4242', LISTEN_FDS: '2', LISTEN_FDNAMES: 'a:b', KEEP: '1' };
    expect(takeSystemdListenFds(env, 4242)).toEqual([SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + 1]);
    expect(env).toEqual({ KEEP: '1' });
    const other: NodeJS.ProcessEnv = { LISTEN_PID: '1', LISTEN_FDS: '1' };
    expect(takeSystemdListenFds(other, 4242)).toEqual([]); // meant for another process
    expect(other).toEqual({});
    expect(takeSystemdListenFds({}, 4242)).toEqual([]);
    expect(() => takeSystemdListenFds({ LISTEN_PID: '7', LISTEN_FDS: 'x' }, 7)).toThrow(/LISTEN_FDS.*"x"/);
  });

  it.runIf(hasNbd)('serves on inherited listening sockets (TCP fd 3 + Unix fd 4) instead of -p/-U', async () => {
    const img = createRawImage(tmp.file('act.raw'), 4 * MiB);
    const tcp = net.createServer();
    await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', r));
    const port = (tcp.address() as net.AddressInfo).port;
    const sockPath = tmp.file('act.sock');
    const unix = net.createServer();
    await new Promise<void>((r) => unix.listen(sockPath, r));
    // -p names the port that is already taken: if activation were ignored, listen would fail.
    const proc = spawnActivated([listeningFd(tcp), listeningFd(unix)], [img, '-p', String(port), '-U', tmp.file('unused.sock')]);
    // The child has its own copies now; close ours so only the child accepts. Closing a
    // Unix listener unlinks its path (synchronously), so park the socket file meanwhile.
    renameSync(sockPath, tmp.file('parked.sock'));
    tcp.close();
    unix.close();
    renameSync(tmp.file('parked.sock'), sockPath);
    try {
      const { uris, stderr } = await waitForLines(proc, 2);
      expect(uris).toEqual([`nbd://127.0.0.1:${port}/`, `nbd+unix:///?socket=${sockPath}`]);
      expect(stderr()).toMatch(/socket activated: ignoring --port\/--bind\/--socket/);
      const out = await nbdPython(
        `
import nbd
a = nbd.NBD(); a.connect_uri(URIS[0])
b = nbd.NBD(); b.connect_uri(URIS[1])
a.pwrite(b"\\x5a" * 4096, 8192); a.flush()
print(a.get_size(), b.get_size(), b.pread(4096, 8192) == b"\\x5a" * 4096)
a.shutdown(); b.shutdown()
`,
        { URIS: uris },
      );
      expect(out.trim()).toBe(`${4 * MiB} ${4 * MiB} True`);
    } finally {
      expect(await stopProc(proc)).toBe(0);
    }
    expect(readFileSync(img).subarray(8192, 8192 + 4096).every((b) => b === 0x5a)).toBe(true);
  });

  it.runIf(hasNbdinfo)('is started by nbdinfo -- [ cownbd serve IMG ] (libnbd socket activation)', () => {
    const img = createRawImage(tmp.file('nbdinfo.raw'), 3 * MiB, [[0, MiB]], 3);
    const r = spawnSync('nbdinfo', ['--json', '--', '[', process.execPath, CLI_PATH, 'serve', img, '--log-level', 'warn', ']'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status, r.stderr).toBe(0);
    // The server's listening line (on the inherited stdout) names libnbd's Unix socket.
    expect(r.stdout).toMatch(/^cownbd: listening on nbd\+unix:\/\/\/\?socket=\/\S+$/m);
    const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { exports: Array<{ 'export-size': number }> };
    expect(json.exports[0]!['export-size']).toBe(3 * MiB);
  });

  it.runIf(hasNbd)('serves libnbd connect_systemd_socket_activation, and the write reaches the image', async () => {
    const img = createRawImage(tmp.file('libnbd.raw'), 2 * MiB);
    const out = await nbdPython(
      `
import nbd
h = nbd.NBD()
h.connect_systemd_socket_activation(ARGV)
h.pwrite(b"\\xc3" * 65536, 65536)
h.flush()
print(h.get_size(), h.pread(65536, 65536) == b"\\xc3" * 65536)
h.shutdown()
del h  # closing the handle: libnbd kills and reaps the server
`,
      { ARGV: [process.execPath, CLI_PATH, 'serve', img, '--log-level', 'warn'] },
      30_000,
    );
    expect(out.trim().split('\n').pop()).toBe(`${2 * MiB} True`);
    expect(readFileSync(img).subarray(65536, 131072).every((b) => b === 0xc3)).toBe(true);
  });
});
