/**
 * The admin API and `cownbd ctl`, black-box against the real server: exports with their
 * chains and bytes per layer, connections, reset/delete rules (409 while connected,
 * ?force=true disconnects), reload through the API, malformed requests get 4xx JSON and
 * the server keeps serving, TCP needs the bearer token.
 */
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, createRawImage, makeTempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, runNbdPython, startServer } from '../helpers/server.js';

import { api, ctl, waitFor } from './control-helpers.js';

const usable = requireNbdPython();

/** A python client that writes, signals READY, then stays connected until STOP exists (or it is cut off). */
const HOLDER = `
import nbd, os, time
h = nbd.NBD(); h.connect_uri(URI)
h.pwrite(b"\\xab" * 65536, OFFSET); h.flush()
open(READY, "w").close()
try:
    while not os.path.exists(STOP):
        h.pread(512, 0); time.sleep(0.02)
    print("finished")
except nbd.Error as e:
    print("cut off")
`;

describe.runIf(usable)('admin API', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('lists exports and connections, enforces reset/delete rules, survives bad requests, reloads', async () => {
    createPatternedImage(tmp.file('golden.img'), 8 << 20, 3);
    createRawImage(tmp.file('data.img'), 4 << 20);
    const sock = tmp.file('admin.sock');
    const config = tmp.file('c.toml');
    writeFileSync(config, `[server]\nadmin = "unix:${sock}"\n[[export]]\nname = "data"\npath = "data.img"\n[overlays]\nbase = "golden.img"\ndir = "vms"\n`);
    const srv = await startServer(['--config', config]);
    const A = { socketPath: sock };
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      expect(statSync(sock).mode & 0o777).toBe(0o600);
      // vm1 gets 64 KiB written at 1 MiB and stays connected.
      const ready = tmp.file('ready');
      const stop = tmp.file('stop');
      const holder = runNbdPython(HOLDER, { URI: srv.uri('vm1'), OFFSET: 1 << 20, READY: ready, STOP: stop });
      await waitFor(() => existsSync(ready), 'the vm1 client');

      const ex = await api(A, 'GET', '/exports');
      expect(ex.status).toBe(200);
      const vm1 = ex.body.exports.find((e: { name: string }) => e.name === 'vm1');
      expect(vm1).toMatchObject({ kind: 'overlay', size: 8 << 20, readOnly: false, connections: 1, format: 'cow' });
      expect(vm1.chain.map((l: { format: string }) => l.format)).toEqual(['cow', 'raw']);
      expect(vm1.chain[0].allocatedBytes).toBe(65536);
      expect(vm1.chain[1].allocatedBytes).toBe((8 << 20) - 65536);
      expect(ex.body.exports.find((e: { name: string }) => e.name === 'data')).toMatchObject({ kind: 'static', format: 'raw', connections: 0 });

      const conns = await api(A, 'GET', '/connections');
      expect(conns.body.connections).toHaveLength(1);
      expect(conns.body.connections[0]).toMatchObject({ export: 'vm1', bytesWritten: 65536, identity: null });
      expect(conns.body.connections[0].client).toMatch(/^127\.0\.0\.1:\d+$/);

      const alloc = await api(A, 'GET', '/exports/vm1/allocation?buckets=8');
      // 8 slices of 1 MiB: the write at 1 MiB fills 1/16 of slice 1.
      expect(alloc.body.top).toEqual([0, 65536 / (1 << 20), 0, 0, 0, 0, 0, 0]);

      // A damaged overlay is listed with the reason, not hidden.
      writeFileSync(tmp.file('vms/broken.cow'), 'not a cow at all');
      const withBroken = (await api(A, 'GET', '/exports')).body.exports;
      expect(withBroken.find((e: { name: string }) => e.name === 'broken').error).toContain('is not a COW magic');
      expect(withBroken.find((e: { name: string }) => e.name === 'vm1').chain).toHaveLength(2);
      const { unlinkSync } = await import('node:fs');
      unlinkSync(tmp.file('vms/broken.cow'));

      // Reset and delete are refused while a client is connected...
      const refused = await api(A, 'POST', '/exports/vm1/reset');
      expect(refused.status).toBe(409);
      expect(refused.body.error).toContain('1 connected client');
      expect((await api(A, 'DELETE', '/exports/vm1')).status).toBe(409);
      const viaCtl = await ctl(['--admin', `unix:${sock}`, 'reset', 'vm1']);
      expect(viaCtl.code).toBe(1);
      expect(viaCtl.stderr).toMatch(/^cownbd: POST \/exports\/vm1\/reset: 409: export "vm1" has 1 connected client/);
      // ...and the client never noticed.
      expect(existsSync(tmp.file('vms/vm1.cow'))).toBe(true);

      // Malformed requests: 4xx JSON, the server keeps going.
      const bad = [
        await api(A, 'POST', '/exports/vm1/reset?force=maybe'),
        await api(A, 'GET', '/exports/nope'),
        await api(A, 'GET', '/exports/vm1/allocation?buckets=-3'),
        await api(A, 'GET', '/no/such/thing'),
        await api(A, 'POST', '/reload', { 'content-type': 'application/json' }, '{"broken'),
        await api(A, 'DELETE', '/exports/data'),
        await api(A, 'POST', '/exports/data/reset'),
        await api(A, 'POST', '/exports/..%2Fetc/reset'),
      ];
      expect(bad.map((r) => r.status)).toEqual([400, 404, 400, 404, 400, 400, 400, 404]);
      for (const r of bad) expect(typeof r.body.error, r.text).toBe('string');
      expect(bad[5]!.body.error).toContain('defined in the configuration');

      // force=true disconnects the client, then resets: vm1 reads the base again.
      const forced = await ctl(['--admin', `unix:${sock}`, '--json', 'reset', 'vm1', '--force']);
      expect(forced.code, forced.stderr).toBe(0);
      expect(JSON.parse(forced.stdout)).toMatchObject({ export: 'vm1', disconnected: 1 });
      expect((await holder).stdout).toContain('cut off');
      const after = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.pread(8, 1 << 20).hex())
`, { URI: srv.uri('vm1') });
      expect(after.trim()).not.toBe('ab'.repeat(8));

      // Delete: gone from disk (once the server has seen the last client go).
      await expect.poll(async () => (await api(A, 'GET', '/connections')).body.connections.length).toBe(0);
      const del = await api(A, 'DELETE', '/exports/vm1');
      expect(del.status, del.text).toBe(200);
      expect(existsSync(tmp.file('vms/vm1.cow'))).toBe(false);

      // Reload through the API: good and bad.
      createRawImage(tmp.file('more.img'), 1 << 20);
      writeFileSync(config, `[server]\nadmin = "unix:${sock}"\n[[export]]\nname = "more"\npath = "more.img"\n[overlays]\nbase = "golden.img"\ndir = "vms"\n`);
      const ok = await ctl(['--admin', `unix:${sock}`, 'reload']);
      expect(ok.code, ok.stderr).toBe(0);
      expect(JSON.parse(ok.stdout)).toMatchObject({ added: ['more'], removed: ['data'] });
      writeFileSync(config, `[[export]]\nname = 1\n`);
      const failed = await api(A, 'POST', '/reload');
      expect(failed.status).toBe(422);
      expect(failed.body.error).toContain('export[0].name');
      const names = (await api(A, 'GET', '/exports')).body.exports.map((e: { name: string }) => e.name);
      expect(names).toContain('more');
      expect(await srv.stop()).toBe(0);
      expect(existsSync(sock)).toBe(false);
    } finally {
      await srv.stop();
    }
  });

  it('on TCP requires the bearer token from the token file', async () => {
    createRawImage(tmp.file('t.img'), 1 << 20);
    const tokenFile = tmp.file('token');
    writeFileSync(tokenFile, 'correct-horse-battery-staple\n');
    const srv = await startServer([tmp.file('t.img'), '--admin', '127.0.0.1:0', '--admin-token-file', tokenFile]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const port = Number(/admin API on http:\/\/127\.0\.0\.1:(\d+)/.exec(srv.stdout())?.[1]);
      expect(port).toBeGreaterThan(0);
      expect((await api({ port }, 'GET', '/exports')).status).toBe(401);
      expect((await api({ port }, 'GET', '/exports', { authorization: 'Bearer wrong' })).status).toBe(401);
      const ok = await api({ port }, 'GET', '/exports', { authorization: 'Bearer correct-horse-battery-staple' });
      expect(ok.status).toBe(200);
      expect(ok.body.exports[0].name).toBe('');
      const viaCtl = await ctl(['--admin', `127.0.0.1:${port}`, '--token-file', tokenFile, 'exports']);
      expect(viaCtl.code, viaCtl.stderr).toBe(0);
      expect(JSON.parse(viaCtl.stdout).exports).toHaveLength(1);
    } finally {
      await srv.stop();
    }
  });
});
