/**
 * What the container image relies on, tested on the host (no Docker engine here):
 *   - --backing-path-map OLD=NEW: overlays whose recorded backing (cow) or image/backing
 *     (add-cow) paths moved are served from the new place, still validated (a map to a
 *     different base is refused), and the data read through them is the real data;
 *   - COWNBD_BIND (the image sets 0.0.0.0), with -b winning;
 *   - the HEALTHCHECK probe (dist/cli/healthcheck.js): healthy against a real server on
 *     TCP and on a Unix socket, unhealthy when nothing or a non-NBD service listens.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdirSync, renameSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createCow } from '../../src/formats/cow/index.js';
import { createAddCow } from '../../src/formats/open-image.js';
import { mapRecordedPath, parsePathMapping } from '../../src/formats/path-map.js';
import { createRawImage, makeTempDir, pattern } from '../helpers/images.js';
import { CLI_PATH, REPO_ROOT, assertBuilt, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const hasQemuIo = requireTool('qemu-io');
const HEALTHCHECK = path.join(REPO_ROOT, 'dist', 'cli', 'healthcheck.js');

function run(cmd: string, args: string[], env: Record<string, string> = {}, ms = 30_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), ms);
    p.once('close', (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
  });
}

const cli = (args: string[], env: Record<string, string> = {}) => {
  assertBuilt();
  return run(process.execPath, [CLI_PATH, ...args], env);
};

describe('--backing-path-map', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('maps whole path components, longest prefix first', () => {
    const maps = [parsePathMapping('/srv/images=/images'), parsePathMapping('/srv/images/gold=/gold')];
    expect(mapRecordedPath('/srv/images/base.img', maps)).toBe('/images/base.img');
    expect(mapRecordedPath('/srv/images/gold/base.img', maps)).toBe('/gold/base.img');
    expect(mapRecordedPath('/srv/imagesX/base.img', maps)).toBe('/srv/imagesX/base.img');
    expect(mapRecordedPath('/srv/images', maps)).toBe('/images');
    expect(() => parsePathMapping('relative=/x')).toThrow(/two absolute paths/);
    expect(() => parsePathMapping('/x')).toThrow(/OLD=NEW/);
  });

  it.runIf(hasQemuIo)('serves a cow and an add-cow overlay whose base directory moved; a map to a wrong base is refused', async () => {
    const host = tmp.file('host-images');
    mkdirSync(host);
    const base = createRawImage(path.join(host, 'base.raw'), 4 * MiB, [[0, 4 * MiB]], 7);
    const cow = path.join(tmp.path, 'vm.cow');
    await createCow(cow, { backingFile: base });
    const addCow = path.join(tmp.path, 'vm.add-cow');
    // Absolute recorded names for both the image file and the backing file.
    await createAddCow(addCow, { imageFile: path.join(host, 'vm-data.img'), backingFile: base });
    // "The container": the same files, mounted elsewhere (rename keeps the mtime).
    const moved = tmp.file('container-images');
    renameSync(host, moved);

    const without = await cli(['serve', '-p', '0', '--export', `c=${cow}`, '--run', 'true']);
    expect(without.status).toBe(1);
    expect(without.stderr).toMatch(/host-images\/base.raw/);

    const map = `${host}=${moved}`;
    const srv = await startServer(['--export', `c=${cow}`, '--export', `a=${addCow}`, '--backing-path-map', map]);
    try {
      for (const name of ['c', 'a']) {
        // The base's pattern shows through at 1 MiB (nothing written there yet)...
        const expected = pattern(MiB, 4096, 7);
        const r = await run('qemu-io', ['-f', 'raw', '-c', `read -v ${MiB} 16`, srv.uri(name)]);
        expect(r.status, r.stderr).toBe(0);
        const hex = [...expected.subarray(0, 16)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
        expect(r.stdout, name).toContain(hex);
        // ...and writes land in the overlay.
        const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 4k', '-c', 'read -P 0x33 0 4k', srv.uri(name)]);
        expect(w.status, w.stderr + w.stdout).toBe(0);
        expect(w.stdout).not.toMatch(/Pattern verification failed/);
      }
    } finally {
      await srv.stop();
    }

    // A map that leads to a different base (other size) is refused by the usual validation.
    const other = tmp.file('other');
    mkdirSync(other);
    createRawImage(path.join(other, 'base.raw'), 2 * MiB);
    createRawImage(path.join(other, 'vm-data.img'), 4 * MiB);
    const wrong = await cli(['serve', '-p', '0', '--export', `c=${cow}`, '--backing-path-map', `${host}=${other}`, '--run', 'true']);
    expect(wrong.status).toBe(1);
    expect(wrong.stderr).toMatch(/size/i);
  });

  it('refuses a malformed map naming it', async () => {
    const img = createRawImage(tmp.file('x.raw'), MiB);
    const r = await cli(['serve', '-p', '0', img, '--backing-path-map', 'images=/x']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--backing-path-map must be OLD=NEW with two absolute paths \(got "images=\/x"\)/);
  });
});

describe('container defaults and HEALTHCHECK', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('COWNBD_BIND sets the listen address (the image sets 0.0.0.0); -b wins', async () => {
    const img = createRawImage(tmp.file('b.raw'), MiB);
    // Under --run cownbd prints its URIs only when --print-uri asks.
    const env = await cli(['serve', '-p', '0', img, '--print-uri', '--run', 'true'], { COWNBD_BIND: '0.0.0.0' });
    expect(env.status, env.stderr).toBe(0);
    expect(env.stdout).toMatch(new RegExp(`^nbd://${os.hostname()}:\\d+/`, 'm'));
    const flag = await cli(['serve', '-p', '0', '-b', '127.0.0.1', img, '--print-uri', '--run', 'true'], { COWNBD_BIND: '0.0.0.0' });
    expect(flag.stdout).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\//m);
  });

  it('healthy against a real server (TCP and Unix socket); the server sees a clean abort', async () => {
    const img = createRawImage(tmp.file('h.raw'), MiB);
    const srv = await startServer([img, '--log-level', 'debug']);
    const unix = await startServer([img, '-r'], { unix: true });
    try {
      const tcp = await run(process.execPath, [HEALTHCHECK, `127.0.0.1:${srv.port}`]);
      expect(tcp.status, tcp.stderr).toBe(0);
      const env = await run(process.execPath, [HEALTHCHECK], { COWNBD_HEALTHCHECK: unix.socketPath! });
      expect(env.status, env.stderr).toBe(0);
      await new Promise((r) => setTimeout(r, 200));
      expect(srv.stderr()).toMatch(/client aborted the handshake/);
      expect(srv.stderr()).not.toMatch(/protocol error/);
    } finally {
      await srv.stop();
      await unix.stop();
    }
  });

  it('unhealthy when nothing listens or the service is not NBD', async () => {
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const freePort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const none = await run(process.execPath, [HEALTHCHECK, `127.0.0.1:${freePort}`]);
    expect(none.status).toBe(1);
    expect(none.stderr).toMatch(/ECONNREFUSED/);

    const http = net.createServer((s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    try {
      const port = (http.address() as net.AddressInfo).port;
      const r = await run(process.execPath, [HEALTHCHECK, `127.0.0.1:${port}`]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/not a fixed-newstyle NBD server|closed the connection before its greeting/);
    } finally {
      http.close();
    }
  });
});
