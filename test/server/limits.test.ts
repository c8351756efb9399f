/**
 * Limits a hostile network cannot break (docs/tls.md): the handshake timeout, the
 * connection caps and the IP allow-list at accept, and the overlay caps (--max-overlays,
 * --min-free, escaping names). Each limit is shown to hold AND to leave others unaffected.
 * Loopback connections from 127.0.0.2 stand in for a second machine.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { CMD, OPT, REP, RawClient, optionRequest, request } from '../helpers/nbd-fixtures.js';
import { mustSucceed, nbdinfo, serverLog } from '../helpers/clients.js';
import { requireTool } from '../helpers/tools.js';
import { PRELUDE, lastJson } from './py-prelude.js';

const MiB = 1024 * 1024;
const hasNbdinfo = requireTool('nbdinfo');
const hasPy = requireNbdPython();

const tmp: TempDir = makeTempDir();
const disk = createRawImage(tmp.file('disk.raw'), 4 * MiB);
const base = createRawImage(tmp.file('base.raw'), 4 * MiB);
let srv: RunningServer | undefined;

afterEach(async () => {
  await srv?.stop();
  srv = undefined;
});
afterAll(() => tmp.cleanup());

const logged = (msg: string) => serverLog(srv!).filter((l) => l.msg === msg);

/** True when the server accepted and sent its greeting; false when it closed at once. */
async function greeted(c: RawClient): Promise<boolean> {
  try {
    await c.read(18, 3000);
    return true;
  } catch {
    return false;
  }
}

describe('--handshake-timeout', () => {
  it.runIf(hasNbdinfo)('drops a client that sends nothing; others, and idle transmission, are unaffected', async () => {
    srv = await startServer([disk, '--handshake-timeout', '1']);
    const silent = await RawClient.connect({ port: srv.port! });
    const idle = await RawClient.connect({ port: srv.port! });
    await idle.handshake();
    const started = Date.now();
    mustSucceed(await nbdinfo([srv.uri()])); // a real client meanwhile
    expect(await silent.closedByServer(5000)).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
    await expect.poll(() => logged('closing connection: handshake idle too long (no option completed in time)')).toHaveLength(1);
    // Idle in transmission past the timeout: still served.
    await new Promise((r) => setTimeout(r, 1200));
    idle.write(request(CMD.READ, { offset: 0, length: 512 }));
    expect((await idle.readSimpleReply(512)).error).toBe(0);
    idle.socket.destroy();
  });
});

describe('--handshake-timeout is an idle gap between options, plus an absolute bound (issue 26.17)', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const IDLE = 'closing connection: handshake idle too long (no option completed in time)';

  it.runIf(hasNbdinfo)('nbdinfo --list of 80 exports completes with the default timeout', async () => {
    const exports = Array.from({ length: 80 }, (_, i) => ['--export', `e${i}=${disk},ro`]).flat();
    srv = await startServer(exports);
    const started = Date.now();
    const r = mustSucceed(await nbdinfo(['--list', '--json', srv.uri()], { timeoutMs: 120_000 }));
    const listed = (JSON.parse(r.stdout) as { exports: unknown[] }).exports;
    expect(listed).toHaveLength(80);
    // libnbd spends ~0.2 s per listed export: more than the old 10 s whole-handshake bound.
    console.log(`nbdinfo --list of 80 exports: ${Date.now() - started} ms`);
    expect(logged(IDLE)).toHaveLength(0);
  });

  it('a client completing options keeps its connection past the idle timeout; one that trickles bytes is cut', async () => {
    srv = await startServer([disk, '--handshake-timeout', '1']);
    const busy = await RawClient.connect({ port: srv.port! });
    const trickler = await RawClient.connect({ port: srv.port! });
    await busy.greet();
    await trickler.greet();
    const started = Date.now();
    // 3 s of work, one complete (unsupported) option every 300 ms; the trickler sends one
    // byte of an option header per 300 ms and never completes one (16 bytes would take 4.8 s).
    const header = optionRequest(0x4242);
    let sent = 0;
    while (Date.now() - started < 3000) {
      busy.write(optionRequest(0x4242));
      expect((await busy.readOptionReply()).type).toBe(REP.ERR_UNSUP);
      if (sent < header.length) trickler.write(header.subarray(sent, ++sent));
      await sleep(300);
    }
    expect(await trickler.closedByServer(100)).toBe(true);
    expect(sent).toBeLessThan(header.length);
    // Still served after 3 × the timeout: a real option gets its answer.
    busy.write(optionRequest(OPT.LIST));
    expect((await busy.readOptionReplies()).at(-1)!.type).toBe(REP.ACK);
    // Then silence: cut after the idle gap.
    const quiet = Date.now();
    expect(await busy.closedByServer(5000)).toBe(true);
    expect(Date.now() - quiet).toBeGreaterThanOrEqual(800);
    await expect.poll(() => logged(IDLE)).toHaveLength(2);
  });

  it('the absolute bound (30 × the timeout, here 15 s) cuts a client that completes options forever', async () => {
    srv = await startServer([disk, '--handshake-timeout', '0.5']);
    const c = await RawClient.connect({ port: srv.port! });
    const closed = new Promise((r) => c.socket.once('close', r));
    const started = Date.now();
    c.write(Buffer.from([0, 0, 0, 3])); // client flags, then an option every 50 ms (idle gap: 500 ms)
    const ticker = setInterval(() => c.write(optionRequest(0x4242)), 50);
    await Promise.race([closed, sleep(40_000)]);
    clearInterval(ticker);
    const ms = Date.now() - started;
    expect(c.socket.destroyed).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(14_000);
    expect(ms).toBeLessThan(30_000);
    await expect.poll(() => logged('closing connection: handshake not finished in time')).toHaveLength(1);
    expect(logged(IDLE)).toHaveLength(0);
  });
});

describe('--max-connections and --max-connections-per-client', () => {
  it('closes connections beyond --max-connections at accept, logs once per interval, admits again after a close', async () => {
    srv = await startServer([disk, '--max-connections', '2']);
    const a = await RawClient.connect({ port: srv.port! });
    const b = await RawClient.connect({ port: srv.port! });
    expect(await greeted(a)).toBe(true);
    expect(await greeted(b)).toBe(true);
    for (let i = 0; i < 5; i++) {
      const extra = await RawClient.connect({ port: srv.port!, localAddress: '127.0.0.2' });
      expect(await greeted(extra)).toBe(false);
    }
    await expect.poll(() => logged('connection refused: --max-connections reached')).toHaveLength(1);
    a.socket.destroy();
    await expect.poll(async () => greeted(await RawClient.connect({ port: srv!.port! })), { timeout: 5000 }).toBe(true);
    b.socket.destroy();
  });

  it('caps one address without affecting another', async () => {
    srv = await startServer([disk, '--max-connections-per-client', '2']);
    const mine = [await RawClient.connect({ port: srv.port! }), await RawClient.connect({ port: srv.port! })];
    for (const c of mine) expect(await greeted(c)).toBe(true);
    expect(await greeted(await RawClient.connect({ port: srv.port! }))).toBe(false);
    expect(await greeted(await RawClient.connect({ port: srv.port!, localAddress: '127.0.0.2' }))).toBe(true);
    await expect.poll(() => logged('connection refused: --max-connections-per-client reached')).toHaveLength(1);
    const warn = logged('connection refused: --max-connections-per-client reached');
    expect(warn[0]!.peer).toBe('127.0.0.1');
    for (const c of mine) c.socket.destroy();
  });
});

describe('--allow-from', () => {
  it('admits only addresses in the list', async () => {
    srv = await startServer([disk, '--allow-from', '127.0.0.2/32', '--allow-from', '10.0.0.0/8']);
    expect(await greeted(await RawClient.connect({ port: srv.port! }))).toBe(false);
    expect(await greeted(await RawClient.connect({ port: srv.port!, localAddress: '127.0.0.2' }))).toBe(true);
    await expect.poll(() => logged('connection refused: address not in --allow-from')[0]?.peer).toBe('127.0.0.1');
  });

  it('refuses a malformed CIDR at start-up, naming it', async () => {
    await expect(startServer([disk, '--allow-from', '10.0.0.0/33'])).rejects.toThrow(/--allow-from "10\.0\.0\.0\/33"/);
  });
});

/** Connect once per name (GO); returns how many were served. */
async function openNames(port: number, names: string[]): Promise<number> {
  const out = await nbdPython(
    `
import nbd
ok = 0
for n in NAMES:
    h = nbd.NBD()
    h.set_export_name(n)
    try:
        h.connect_tcp('127.0.0.1', str(PORT))
        ok += 1
        h.shutdown()
    except nbd.Error:
        pass
print(ok)
`,
    { NAMES: names, PORT: port },
    120_000,
  );
  return Number(out.trim());
}

describe.runIf(hasPy)('overlay limits', () => {
  it('--max-overlays: 200 distinct names create exactly N overlays; existing ones still open', async () => {
    const dir = tmp.file('ovl-max');
    srv = await startServer(['--base', base, '--overlay-dir', dir, '--max-overlays', '5']);
    const names = Array.from({ length: 200 }, (_, i) => `m${i}`);
    expect(await openNames(srv.port!, names)).toBe(5);
    expect(readdirSync(dir).filter((f) => f.endsWith('.cow')).sort()).toEqual(['m0.cow', 'm1.cow', 'm2.cow', 'm3.cow', 'm4.cow']);
    expect(await openNames(srv.port!, ['m3', 'm999'])).toBe(1);
    await expect.poll(() => logged('overlay not created: limit reached').length).toBeGreaterThanOrEqual(1);
    const warns = logged('overlay not created: limit reached');
    expect(warns.length).toBeLessThanOrEqual(2); // rate-limited, not one per refusal
    expect(String(warns[0]!.reason)).toContain('--max-overlays 5');
  });

  it('--min-free: no overlay is created when the reserve is not there', async () => {
    const dir = tmp.file('ovl-free');
    srv = await startServer(['--base', base, '--overlay-dir', dir, '--min-free', '1P']);
    expect(await openNames(srv.port!, ['vm1'])).toBe(0);
    expect(readdirSync(dir)).toEqual([]);
    await expect.poll(() => String(logged('overlay not created: limit reached')[0]?.reason)).toMatch(/bytes free .*--min-free/);
  });

  it('--max-overlays with --ephemeral: a third concurrent connection is refused, a later one served', async () => {
    const dir = tmp.file('eph');
    srv = await startServer(['--ephemeral', base, '-n', 'e', '--ephemeral-dir', dir, '--max-overlays', '2']);
    const out = await nbdPython(
      `
import nbd
hs = []
res = []
for i in range(3):
    h = nbd.NBD()
    try:
        h.connect_uri(URI)
        hs.append(h)
        res.append(True)
    except nbd.Error:
        res.append(False)
hs[0].shutdown()
h = nbd.NBD()
h.connect_uri(URI)
res.append(True)
print(res)
`,
      { URI: srv.uri('e') },
    );
    expect(out.trim()).toBe('[True, True, False, True]');
  });

  it('names that try to leave the directory create nothing anywhere', async () => {
    const root = tmp.file('esc');
    const dir = path.join(root, 'inner');
    srv = await startServer(['--base', base, '--overlay-dir', dir]);
    const evil = ['../escaped', '../../escaped', '/tmp/escaped-abs', 'a/b', '..', '.', '.hidden', 'x'.repeat(300), 'sp ace', '%2e%2e'];
    expect(await openNames(srv.port!, evil)).toBe(0);
    expect(readdirSync(dir)).toEqual([]);
    expect(readdirSync(root)).toEqual(['inner']);
    expect(existsSync('/tmp/escaped-abs.cow')).toBe(false);
  });
});

/** Unprivileged user+mount namespaces (to give the server a tiny tmpfs): skip locally, fail in CI. */
function canUnshareTmpfs(): boolean {
  const r = spawnSync('unshare', ['-Urm', 'sh', '-c', 'mount -t tmpfs -o size=1m none /mnt'], { stdio: 'ignore' });
  if (r.status === 0) return true;
  if (process.env.CI === 'true') throw new Error('unshare -Urm with a tmpfs mount is required (CI=true: missing requirements are failures)');
  console.warn('\n*** SKIPPING the ENOSPC test: unprivileged user/mount namespaces are not available ***\n');
  return false;
}

describe.runIf(hasPy && canUnshareTmpfs())('ENOSPC on a full overlay filesystem', () => {
  it('answers ENOSPC to the writing client only; it and the others keep working', async () => {
    const dir = tmp.file('tiny');
    mkdirSync(dir);
    const big = createRawImage(tmp.file('big.raw'), 32 * MiB);
    // The server sees a 3 MiB tmpfs at DIR (its own mount namespace).
    const wrap = ['unshare', '-Urm', 'sh', '-c', 'mount -t tmpfs -o size=3m none "$0" && exec "$@"', dir];
    srv = await startServer(['--base', big, '--overlay-dir', dir, '--min-free', '0'], { wrap });
    const out = await nbdPython(
      PRELUDE +
        `
a = nbd.NBD(); a.set_export_name('filler'); a.connect_tcp('127.0.0.1', str(PORT))
b = nbd.NBD(); b.set_export_name('bystander'); b.connect_tcp('127.0.0.1', str(PORT))
b.pwrite(b'\\x42' * 65536, 0)
b.flush()
errs = []
for i in range(64):
    e = err_of(lambda: a.pwrite(b'\\x17' * (512 * 1024), i * 512 * 1024))
    if e:
        errs.append(e)
        break
# The full filesystem is full for everyone, but blocks already allocated stay writable.
b_rewrite = err_of(lambda: b.pwrite(b'\\x43' * 65536, 0))
out({"err": errs, "a_reads": a.pread(4096, 0) == b'\\x17' * 4096,
     "b_reads": b.pread(65536, 0) == b'\\x43' * 65536, "b_rewrite": b_rewrite, "b_flush": err_of(lambda: b.flush())})
`,
      { PORT: srv.port },
    );
    expect(lastJson(out)).toEqual({ err: ['ENOSPC'], a_reads: true, b_reads: true, b_rewrite: 0, b_flush: 0 });
  });
});
