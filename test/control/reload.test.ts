/**
 * `serve --config FILE` and reload by SIGHUP, black-box: the real CLI, real clients.
 *
 * - A bad config at start-up stops serve with one line naming file, line and key.
 * - Under fio load on one export, another export is added, one removed (a client still
 *   connected to it keeps reading and writing; new connections are refused), one changed
 *   (new connections see the new definition); fio sees no error; nbdinfo --list shows
 *   the new set. A broken config then changes nothing and the failure is logged.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { fioNbd, nbdinfo, nbdinfoJson, serverLog } from '../helpers/clients.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, assertBuilt, nbdPython, requireNbdPython, runNbdPython, startServer } from '../helpers/server.js';
import { makeTlsFixture, requireTlsTools } from '../helpers/tls-creds.js';
import { requireTool } from '../helpers/tools.js';

const usable = requireTool('fio') && requireTool('nbdinfo') && requireNbdPython();

function exportsToml(list: Array<{ name: string; path: string; extra?: string }>): string {
  return list.map((e) => `[[export]]\nname = "${e.name}"\npath = "${e.path}"\n${e.extra ?? ''}\n`).join('\n');
}

async function listNames(uri: string): Promise<string[]> {
  const doc = await nbdinfoJson(uri, ['--list']);
  return doc.exports.map((e) => e['export-name']).sort();
}

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('serve --config: validation', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('refuses a bad file with file, line and key path', () => {
    assertBuilt();
    createRawImage(tmp.file('a.img'), 1 << 20);
    const file = tmp.file('bad.toml');
    writeFileSync(file, `[server]\nlog-level = "info"\n\n[[export]]\nname = "a"\npath = "a.img"\n\n[[export]]\nname = "b"\npath = "b.img"\nformat = "vmdk"\nread-olny = true\n`);
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--config', file, '-p', '0'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`${file}:11: export[1] ("b").format: must be one of raw, cow, add-cow, qcow2 (got "vmdk")`);
    expect(r.stderr).toContain(`${file}:12: export[1] ("b").read-olny: unknown key "read-olny"`);

    writeFileSync(file, `[server]\nlisten = ["127.0.0.1:99999"]\n`);
    const r2 = spawnSync(process.execPath, [CLI_PATH, 'serve', '--config', file], { encoding: 'utf8', timeout: 20_000 });
    expect(r2.status).toBe(1);
    expect(r2.stderr).toContain(`${file}:2: server.listen[0]: must be "HOST:PORT"`);

    writeFileSync(file, `[[export]]\nname = "a"\npath = "missing.img"\n`);
    const r3 = spawnSync(process.execPath, [CLI_PATH, 'serve', '--config', file, '-p', '0'], { encoding: 'utf8', timeout: 20_000 });
    expect(r3.status).toBe(1);
    expect(r3.stderr).toMatch(/export "a".*missing\.img/);
  });
});

describe.runIf(requireTlsTools() && requireNbdPython())('serve --config: TLS, access and limits', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('takes [tls], [limits] and export allow lists from the file; bad values name the key', async () => {
    const fx = makeTlsFixture(tmp.file('tls'), ['alice', 'bob']);
    createRawImage(tmp.file('d.img'), 1 << 20);
    const config = tmp.file('tls.toml');
    writeFileSync(
      config,
      `[tls]\nmode = "require"\npsk = "${fx.pskFile}"\n\n[limits]\nmax-connections = 5\nmin-free = "1M"\n\n[[export]]\nname = "d"\npath = "d.img"\nallow = ["alice"]\n`,
    );
    const srv = await startServer(['--config', config]);
    try {
      const attempt = (user: string, tls: boolean) =>
        nbdPython(`
import nbd
h = nbd.NBD()
if TLS:
    h.set_tls(nbd.TLS_REQUIRE); h.set_tls_psk_file(PSK); h.set_tls_username(USER)
h.set_export_name('d')
try:
    h.connect_tcp('127.0.0.1', str(PORT)); h.pwrite(b'x' * 512, 0); h.flush(); print('opened')
except nbd.Error:
    print('refused')
`, { TLS: tls, PSK: fx.pskFile, USER: user, PORT: srv.port });
      expect((await attempt('alice', true)).trim()).toBe('opened');
      expect((await attempt('bob', true)).trim()).toBe('refused');
      expect((await attempt('alice', false)).trim()).toBe('refused');
    } finally {
      await srv.stop();
    }
    writeFileSync(config, `[tls]\nmode = "on"\n\n[limits]\nmax-connections = 0\nmin-free = "lots"\n`);
    const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--config', config, '-p', '0'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`${config}:2: tls.mode: "on" needs certificates = DIR or psk = FILE`);
    expect(r.stderr).toContain(`${config}:5: limits.max-connections: must be at least 1`);
    expect(r.stderr).toContain(`${config}:6: limits.min-free: must be a size such as 1G`);
  });
});

describe.runIf(usable)('serve --config: reload', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('adds, removes and changes exports under fio load; a bad file changes nothing', async () => {
    for (const n of ['load', 'keep', 'gone', 'changed', 'new']) createRawImage(tmp.file(`${n}.img`), 16 << 20);
    const config = tmp.file('cownbd.toml');
    const base = [
      { name: 'load', path: 'load.img' },
      { name: 'keep', path: 'keep.img', extra: 'description = "stays"' },
    ];
    writeFileSync(config, exportsToml([...base, { name: 'gone', path: 'gone.img' }, { name: 'changed', path: 'changed.img' }]));
    const srv = await startServer(['--config', config]);
    try {
      expect(await listNames(srv.uri('load'))).toEqual(['changed', 'gone', 'keep', 'load']);
      const fio = fioNbd(
        srv.uri('load'),
        { name: 'load', rw: 'randwrite', bs: '4k', size: '8M', iodepth: 8, runtime: 4, time_based: 1, verify: 'crc32c', verify_backlog: 256 },
        { timeoutMs: 60_000 },
      );
      // A client of "gone" stays connected across the reload, then keeps working.
      const flag = tmp.file('reloaded');
      const holder = runNbdPython(
        `
import nbd, os, time
h = nbd.NBD(); h.connect_uri(URI)
h.pwrite(b"before" * 100, 0); h.flush()
open(READY, "w").close()
while not os.path.exists(FLAG): time.sleep(0.02)
h.pwrite(b"after!" * 100, 4096); h.flush()
assert h.pread(600, 0) == b"before" * 100
assert h.pread(600, 4096) == b"after!" * 100
print("ok")
`,
        { URI: srv.uri('gone'), FLAG: flag, READY: tmp.file('ready') },
      );
      await waitFor(() => existsSync(tmp.file('ready')), 'the client of "gone" to connect');
      await new Promise((r) => setTimeout(r, 300)); // fio is running too
      writeFileSync(config, exportsToml([...base, { name: 'changed', path: 'changed.img', extra: 'read-only = true' }, { name: 'new', path: 'new.img' }]));
      srv.proc.kill('SIGHUP');
      await waitFor(() => srv.stderr().includes('configuration reloaded'), 'the reload').catch((err: Error) => {
        throw new Error(`${err.message}\n${srv.stderr().slice(-1500)}`);
      });
      expect(await listNames(srv.uri('load'))).toEqual(['changed', 'keep', 'load', 'new']);
      // Removed: new connections are refused...
      const refused = await nbdinfo([srv.uri('gone')]);
      expect(refused.code).not.toBe(0);
      // ...the connected client keeps working.
      writeFileSync(flag, '');
      const held = await holder;
      expect(held.stderr).toBe('');
      expect(held.stdout).toContain('ok');
      // Changed: new connections see it read-only; unchanged keeps its description.
      const changed = await nbdinfoJson(srv.uri('changed'));
      expect(changed.exports[0]!.is_read_only).toBe(true);
      const keep = await nbdinfoJson(srv.uri('keep'));
      expect(keep.exports[0]!.description).toBe('stays');
      const reload = serverLog(srv).find((l) => l.msg === 'configuration reloaded')!;
      expect(reload).toMatchObject({ added: ['new'], removed: ['gone'], changed: ['changed'], unchanged: ['load', 'keep'] });

      // A broken file: nothing changes, the reason is logged, the server keeps serving.
      writeFileSync(config, `${exportsToml(base)}\n[[export]]\nname = "x"\n`);
      srv.proc.kill('SIGHUP');
      await waitFor(() => srv.stderr().includes('reload failed'), 'the failed reload');
      const failed = serverLog(srv).find((l) => l.msg === 'reload failed: configuration unchanged')!;
      expect(String(failed.reason)).toContain('export[2] ("x").path: is required');
      expect(await listNames(srv.uri('load'))).toEqual(['changed', 'keep', 'load', 'new']);

      // allow= needs TLS identities, which this server has not: refused, nothing changes.
      writeFileSync(config, exportsToml([...base, { name: 'new', path: 'new.img', extra: 'allow = ["vm9"]' }]));
      srv.proc.kill('SIGHUP');
      await waitFor(() => serverLog(srv).filter((l) => l.msg === 'reload failed: configuration unchanged').length === 2, 'the refused reload');
      expect(String(serverLog(srv).filter((l) => l.msg === 'reload failed: configuration unchanged')[1]!.reason)).toContain('export "new": allow= needs client identities');
      expect(await listNames(srv.uri('load'))).toEqual(['changed', 'keep', 'load', 'new']);

      const result = await fio;
      expect(result.code, result.stderr).toBe(0);
      expect(result.jobs[0]!.error).toBe(0);
      expect(result.jobs[0]!.writeBytes).toBeGreaterThan(0);
      expect(await srv.stop()).toBe(0);
      expect(serverLog(srv).some((l) => l.msg === 'retired export closed' && l.export === 'gone')).toBe(true);
    } finally {
      await srv.stop();
    }
  });
});
