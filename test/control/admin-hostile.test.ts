/**
 * The admin API against hostile callers, black-box against the real server:
 *
 * - CSRF / DNS rebinding: a web page (real chromium, through a TCP forwarder standing in
 *   for `ssh -L` to the Unix socket) posting a text/plain form and a no-cors fetch cannot
 *   reset or snapshot a disk; raw HTTP requests with a foreign Origin/Referer, a form
 *   content type or a foreign Host are refused 403; the disk is untouched. `cownbd ctl`
 *   and a same-origin JSON request still work.
 * - Half-sent requests (headers, bodies, silence) are closed within the bound, and
 *   connections beyond the cap are closed as they arrive.
 * - The Unix socket appears with mode 0600 even under umask 000.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { findNbdPython, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { hasTool } from '../helpers/tools.js';
import { api, ctl, waitFor } from './control-helpers.js';

const usable = requireNbdPython();
const MiB = 1 << 20;

/** Write 64 KiB of 0xcd at 0 to export `name`, flushed, and disconnect. */
async function writeMarker(uri: string): Promise<void> {
  await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
h.pwrite(b"\\xcd" * 65536, 0); h.flush(); h.shutdown()
`, { URI: uri });
}

async function readMarker(uri: string): Promise<string> {
  return (await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.pread(8, 0).hex())
`, { URI: uri })).trim();
}

/** A TCP port that forwards every connection to a Unix socket (what `ssh -L` does). */
async function forward(socketPath: string): Promise<{ port: number; close(): void }> {
  const conns = new Set<net.Socket>();
  const server = net.createServer((c) => {
    const u = net.connect(socketPath);
    conns.add(c).add(u);
    c.pipe(u).pipe(c);
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => {
      for (const c of conns) c.destroy();
      server.close();
    },
  };
}

describe.runIf(usable)('admin API: hostile callers', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('refuses cross-origin, form-typed and foreign-Host requests; the disk is untouched; ctl and same-origin JSON work', async () => {
    createPatternedImage(tmp.file('golden.img'), 8 * MiB, 6);
    const sock = tmp.file('csrf.sock');
    const srv = await startServer(['--base', tmp.file('golden.img'), '--overlay-dir', tmp.file('vms'), '--admin', `unix:${sock}`]);
    const A = { socketPath: sock };
    const fwd = await forward(sock);
    const local = `localhost:${fwd.port}`;
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      await writeMarker(srv.uri('vm1'));
      expect(await readMarker(srv.uri('vm1'))).toBe('cd'.repeat(8));

      const evil = 'http://evil.example';
      const refused = [
        // The attack: a cross-origin text/plain POST with force=true.
        await api(A, 'POST', '/exports/vm1/reset?force=true', { host: local, origin: evil, 'content-type': 'text/plain' }, 'x=y'),
        await api(A, 'POST', '/exports/vm1/snapshot', { host: local, origin: evil }),
        await api(A, 'DELETE', '/exports/vm1?force=true', { host: local, origin: evil }),
        await api(A, 'POST', '/exports/vm1/reset?force=true', { host: local, origin: 'null' }),
        await api(A, 'POST', '/exports/vm1/reset?force=true', { host: local, referer: `${evil}/page.html` }),
        // Without Origin (e.g. an old browser), the form content types still fail.
        await api(A, 'POST', '/exports/vm1/reset?force=true', { host: local, 'content-type': 'text/plain' }, 'x=y'),
        await api(A, 'POST', '/exports/vm1/snapshot', { host: local, 'content-type': 'application/x-www-form-urlencoded' }, 'a=b'),
        await api(A, 'POST', '/exports/vm1/snapshot', { host: local, 'content-type': 'multipart/form-data; boundary=x' }, '--x--'),
        // DNS rebinding: the attacker's name resolved to 127.0.0.1.
        await api(A, 'GET', '/exports', { host: `rebind.evil.example:${fwd.port}` }),
        await api(A, 'POST', '/exports/vm1/reset?force=true', { host: `rebind.evil.example:${fwd.port}`, origin: `http://rebind.evil.example:${fwd.port}` }),
      ];
      expect(refused.map((r) => r.status)).toEqual(refused.map(() => 403));
      expect(refused[0]!.body.error).toBe(`Origin "${evil}" does not match Host "${local}": cross-origin POST refused`);
      expect(refused[3]!.body.error).toContain('Origin "null" does not match');
      expect(refused[4]!.body.error).toContain(`Referer "${evil}/page.html" does not match`);
      expect(refused[5]!.body.error).toBe('Content-Type "text/plain" refused for POST: send no body, or application/json');
      expect(refused[8]!.body.error).toContain(`Host "rebind.evil.example:${fwd.port}" is not a local name`);

      // A real browser: a page on another origin posts a text/plain form and a no-cors
      // fetch to the forwarded socket.
      if (hasTool('chromium')) {
        const { chromium } = await import('playwright-core');
        const target = `http://127.0.0.1:${fwd.port}`;
        const page = `<!doctype html><form id="f" method="POST" enctype="text/plain" action="${target}/exports/vm1/reset?force=true"><input name="x" value="y"></form>
<script>
fetch("${target}/exports/vm1/snapshot", { method: "POST", mode: "no-cors", body: "x" })
  .catch(() => {})
  .finally(() => { document.title = "fetched"; document.getElementById("f").submit(); });
</script>`;
        const attacker = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(page));
        await new Promise<void>((r) => attacker.listen(0, '127.0.0.1', r));
        const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
        try {
          const tab = await browser.newPage();
          await tab.goto(`http://127.0.0.1:${(attacker.address() as net.AddressInfo).port}/`);
          // The form's answer replaces the page: the refusal itself.
          await tab.waitForURL(`${target}/exports/vm1/reset?force=true`);
          expect(await tab.locator('body').innerText()).toContain('cross-origin POST refused');
        } finally {
          await browser.close();
          attacker.close();
        }
      }

      // Nothing happened: the data is there, no snapshot layer, no disconnect.
      expect(await readMarker(srv.uri('vm1'))).toBe('cd'.repeat(8));
      expect(readdirSync(tmp.file('vms')).sort()).toEqual(['vm1.cow']);

      // What the operator does still works: ctl, curl-style Host names, same-origin JSON.
      const viaCtl = await ctl(['--admin', `unix:${sock}`, 'exports']);
      expect(viaCtl.code, viaCtl.stderr).toBe(0);
      expect((await api(A, 'GET', '/exports', { host: 'cownbd' })).status).toBe(200);
      const same = await api(A, 'POST', '/exports/vm1/snapshot', { host: local, origin: `http://${local}`, 'content-type': 'application/json' }, '{}');
      expect(same.status, same.text).toBe(201);
      const reset = await ctl(['--admin', `unix:${sock}`, 'reset', 'vm1']);
      expect(reset.code, reset.stderr).toBe(0);
      expect(await readMarker(srv.uri('vm1'))).toBe('cd'.repeat(8)); // back to the snapshot
    } finally {
      fwd.close();
      await srv.stop();
    }
  });

  it('closes half-sent requests within the bound and caps connections', async () => {
    createPatternedImage(tmp.file('t.img'), MiB, 7);
    const sock = tmp.file('slow.sock');
    const srv = await startServer([tmp.file('t.img'), '--admin', `unix:${sock}`]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const t0 = Date.now();
      type Probe = { kind: string; closedAfter?: number };
      const probes: Probe[] = [];
      const open = (kind: string, send: string): Promise<void> =>
        new Promise((resolve) => {
          const p: Probe = { kind };
          probes.push(p);
          const s = net.connect(sock, () => {
            if (send) s.write(send);
            resolve();
          });
          s.on('error', () => {});
          s.on('close', () => (p.closedAfter = Date.now() - t0));
          s.resume();
        });
      for (let i = 0; i < 15; i++) await open('headers', 'GET /exports HTTP/1.1\r\nHost: localhost\r\nX-Slow: ');
      for (let i = 0; i < 15; i++) await open('body', 'POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a":');
      for (let i = 0; i < 15; i++) await open('silent', '');
      await waitFor(() => probes.every((p) => p.closedAfter !== undefined), 'every half-sent request to be closed', 25_000);
      const worst = (kind: string) => Math.max(...probes.filter((p) => p.kind === kind).map((p) => p.closedAfter!));
      // headers: 5 s, whole request: 10 s, checked every 0.5 s (ADMIN_LIMITS); slack for a loaded machine.
      expect(worst('headers')).toBeLessThan(8_000);
      expect(worst('silent')).toBeLessThan(8_000);
      expect(worst('body')).toBeLessThan(13_000);

      // More connections than the cap (64): the extra ones are closed at once.
      const flood: Array<{ closed: boolean; socket: net.Socket }> = [];
      for (let i = 0; i < 100; i++) {
        const entry = { closed: false, socket: net.connect(sock) };
        entry.socket.on('error', () => {}).on('close', () => (entry.closed = true));
        flood.push(entry);
      }
      await waitFor(() => flood.filter((f) => f.closed).length >= 36, 'the connections over the cap to be closed', 3_000);
      for (const f of flood) f.socket.destroy();
      await waitFor(() => flood.every((f) => f.closed), 'the flood to end');
      // Still answering, and the NBD side never noticed.
      await expect.poll(async () => (await api({ socketPath: sock }, 'GET', '/exports')).status, { timeout: 5_000 }).toBe(200);
      expect(await nbdPython('import nbd\nh = nbd.NBD(); h.connect_uri(URI)\nprint(h.get_size())', { URI: srv.uri() })).toBe(`${MiB}\n`);
    } finally {
      await srv.stop();
    }
  });

  it('the Unix socket appears with mode 0600 even under umask 000', async () => {
    createPatternedImage(tmp.file('u.img'), MiB, 8);
    const py = findNbdPython()!;
    for (let round = 0; round < 5; round++) {
      const sock = tmp.file(`umask-${round}.sock`);
      // Polls for the socket as fast as python can; prints the mode it first sees.
      const watcher = spawn(py, ['-u', '-c', `
import os, sys, time
print("ready", flush=True)
end = time.time() + 30
while time.time() < end:
    try:
        st = os.lstat(sys.argv[1])
    except FileNotFoundError:
        continue
    print(oct(st.st_mode & 0o777)); break
`, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
      let seen = '';
      watcher.stdout.setEncoding('utf8').on('data', (d: string) => (seen += d));
      await waitFor(() => seen.includes('ready'), 'the watcher');
      const srv = await startServer([tmp.file('u.img'), '--admin', `unix:${sock}`], { wrap: ['sh', '-c', 'umask 000; exec "$@"', 'sh'] });
      try {
        await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
        await waitFor(() => /0o\d+/.test(seen), 'the watcher to see the socket');
        expect(seen.trim().split('\n').pop(), `round ${round}`).toBe('0o600');
        expect((await api({ socketPath: sock }, 'GET', '/exports')).status).toBe(200);
        // The private directory it was bound in is gone.
        expect(readdirSync(tmp.path).filter((f) => f.startsWith('.cownbd-'))).toEqual([]);
      } finally {
        watcher.kill();
        await srv.stop();
      }
      expect(existsSync(sock)).toBe(false);
    }
  });
});
