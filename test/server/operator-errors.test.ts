/**
 * Operator mistakes end in ONE line on stderr that names the path and says what to do,
 * status 1, and never a hang: a directory or a FIFO/socket/device given as an image, a
 * missing file (in qemu-img's words) or directory, a read-only image served without -r,
 * a Unix socket in a missing directory, an --ephemeral-dir that is a file, an export name
 * over the NBD limit, and an --export description that used to swallow later options.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { parseExportSpec } from '../../src/cli/serve-options.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, assertBuilt } from '../helpers/server.js';

const MiB = 1024 * 1024;

interface Ran {
  status: number | null;
  stderr: string;
  timedOut: boolean;
}

/** Run the CLI; a run that has not ended after `ms` is killed and reported as timed out. */
function runCli(args: string[], opts: { cwd?: string; uid?: number; gid?: number; ms?: number } = {}): Promise<Ran> {
  assertBuilt();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI_PATH, ...args], { cwd: opts.cwd, uid: opts.uid, gid: opts.gid, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let timedOut = false;
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, opts.ms ?? 8000);
    p.once('close', (status) => {
      clearTimeout(t);
      resolve({ status, stderr, timedOut });
    });
    // A spawn that cannot start (e.g. "nobody" cannot reach node under a 0700 directory)
    // emits 'error' and never 'close': fail with the reason instead of hanging the test.
    p.once('error', (err) => {
      clearTimeout(t);
      resolve({ status: null, stderr: `${stderr}spawn failed: ${err.message}`, timedOut });
    });
  });
}

function expectOneLine(r: Ran, message: RegExp): void {
  expect(r.timedOut, 'the command hung').toBe(false);
  expect(r.status, r.stderr).toBe(1);
  const lines = r.stderr.split('\n').filter(Boolean);
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(message);
}

describe('operator errors name the path and say what to do', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const dir = tmp.file('work');
  mkdirSync(dir);
  createRawImage(`${dir}/ok.raw`, MiB);
  mkdirSync(`${dir}/adir`);
  spawnSync('mkfifo', [`${dir}/fifo`]);

  it.each([
    [['serve', 'adir', '-p', '0'], /^cownbd: export "": 'adir' is a directory, not an image file: give the path of an image file$/],
    [['serve', 'missing.raw', '-p', '0'], /^cownbd: export "": Could not open 'missing.raw': No such file or directory$/],
    [['serve', 'nodir/missing.raw', '-p', '0'], /Could not open 'nodir\/missing.raw': No such file or directory \(directory '.*\/nodir' does not exist\)$/],
    [['serve', 'fifo', '-p', '0'], /'fifo' is a FIFO \(named pipe\), not an image file/],
    [['serve', '/dev/null', '-p', '0'], /'\/dev\/null' is a character device, not an image file/],
    [['serve', '--export', 'a=ok.raw', '--export', 'b=fifo,ro', '-p', '0'], /export "b": 'fifo' is a FIFO/],
    [['serve', '--ephemeral', 'fifo', '-p', '0'], /base image: 'fifo' is a FIFO/],
    [['serve', 'ok.raw', '-U', 'nodir/nbd.sock'], /cannot listen on nodir\/nbd.sock: directory '.*\/nodir' does not exist \(create it first/],
    [['serve', 'ok.raw', '-U', 'ok.raw'], /cannot listen on ok.raw: it exists and is a regular file/],
    [['serve', '--ephemeral', 'ok.raw', '--ephemeral-dir', 'ok.raw', '-p', '0'], /^cownbd: --ephemeral-dir 'ok.raw' is a file, not a directory: give a directory/],
    [['serve', '-n', 'x'.repeat(4097), 'ok.raw', '-p', '0'], /export name "x{40}…" is 4097 bytes: the NBD limit is 4096/],
    [['serve', '--export', `${'y'.repeat(4097)}=ok.raw`, '-p', '0'], /name longer than 4096 bytes/],
    [['serve', '--export', 'a=ok.raw,description=Base disk, v2', '-p', '0'], /unknown option " v2".*description with commas must be quoted/],
    [['info', 'missing.raw'], /^cownbd: Could not open 'missing.raw': No such file or directory$/],
    [['info', 'fifo'], /'fifo' is a FIFO \(named pipe\), not an image file/],
    [['map', 'fifo'], /'fifo' is a FIFO/],
    [['convert', 'ok.raw', '-O', 'raw', 'nodir/out.raw'], /Could not create 'nodir\/out.raw': directory '.*\/nodir' does not exist/],
    [['create', '-f', 'cow', 'nodir/x.cow', '--backing', 'ok.raw'], /Could not create 'nodir\/x.cow': directory '.*\/nodir' does not exist/],
  ])('%#: %s', async (args, message) => {
    expectOneLine(await runCli(args, { cwd: dir }), message);
  });

  it('check reports a directory or FIFO in its own result (it has a JSON form), without hanging', async () => {
    for (const f of ['adir', 'fifo']) {
      const r = await runCli(['check', f], { cwd: dir });
      expect(r.timedOut).toBe(false);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`${f}: not a regular file`));
    }
  });

  it('an invalid --log-level is refused naming the value and the choices', async () => {
    const r = await runCli(['serve', 'ok.raw', '-p', '0', '--log-level', 'verbose'], { cwd: dir });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/'verbose' is invalid\. Allowed choices are trace, debug, info, warn, error/);
  });

  it('a read-only image served without -r: the message suggests -r, and -r serves it', async () => {
    // As root, permission bits do not stop writes: run the server as "nobody" then.
    const asRoot = process.getuid?.() === 0;
    const ro = tmp.file('ro');
    mkdirSync(ro);
    chmodSync(ro, 0o755);
    chmodSync(tmp.path, 0o755); // "nobody" must reach it
    const img = createRawImage(`${ro}/base.raw`, MiB);
    chmodSync(img, 0o444);
    const who = asRoot ? { uid: 65534, gid: 65534 } : {};
    const r = await runCli(['serve', img, '-p', '0'], { cwd: ro, ...who });
    expectOneLine(r, /Could not open '.*base.raw' for writing: Permission denied: serve it read-only with -r \(--read-only\), or make it writable$/);
    // With -r it starts (and stops once its --run command has looked at it).
    const ok = await runCli(['serve', img, '-p', '0', '-r', '--run', 'true'], { cwd: ro, ...who });
    expect(ok.status, ok.stderr).toBe(0);
  });

  it('a FIFO never hangs the server', async () => {
    // (Opening a FIFO blocks until the other end opens: stat first, then refuse. The bound
    // is generous: a loaded CI machine starts node slowly, a hang never ends.)
    const fifo = tmp.file('fifo2');
    spawnSync('mkfifo', [fifo]);
    const r = await runCli(['serve', fifo, '-p', '0'], { ms: 30_000 });
    expectOneLine(r, /is a FIFO/);
  });

  it('a socket file given as an image is refused', async () => {
    const sock = tmp.file('a.sock');
    const srv = net.createServer();
    await new Promise<void>((resolve) => srv.listen(sock, resolve));
    try {
      expectOneLine(await runCli(['serve', sock, '-p', '0']), /is a socket, not an image file/);
    } finally {
      srv.close();
    }
  });

  it('--export description: quoted text keeps its commas; later options are honoured, never swallowed', () => {
    expect(parseExportSpec('a=x.raw,description="Base disk, v2",ro')).toMatchObject({ name: 'a', path: 'x.raw', description: 'Base disk, v2', readOnly: true });
    expect(parseExportSpec('a=x.raw,description=Base disk,format=raw')).toMatchObject({ description: 'Base disk', format: 'raw' });
    expect(() => parseExportSpec('a=x.raw,description=Base, disk')).toThrow(/unknown option " disk".*quoted/);
    expect(() => parseExportSpec('a=x.raw,description="open')).toThrow(/unbalanced double quote/);
  });
});

// Keep the helper honest: a command that does hang is reported as such.
describe('runCli helper', () => {
  it('reports a hang', async () => {
    const tmp = makeTempDir();
    try {
      const img = createRawImage(tmp.file('h.raw'), MiB);
        const r = await runCli(['serve', img, '-p', '0'], { ms: 1500 });
      expect(r.timedOut).toBe(true);
    } finally {
      tmp.cleanup();
    }
  });
});
