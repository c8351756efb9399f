/**
 * A config file (or admin token file) that is not a regular file, or is huge, is refused
 * at once with a clear message, at start-up and on reload (SIGHUP and POST /reload); the
 * server keeps serving and SIGTERM still stops it. Before, a FIFO blocked the read forever, and the blocked
 * threadpool thread then kept even two SIGTERMs from ending the process.
 */
import { spawnSync } from 'node:child_process';
import { unlinkSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { serverLog } from '../helpers/clients.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, assertBuilt, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { api, waitFor } from './control-helpers.js';

const usable = requireTool('mkfifo') && requireNbdPython();

function serveConfig(file: string): { status: number | null; stderr: string; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [CLI_PATH, 'serve', '--config', file, '-p', '0'], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' }); // SIGKILL: a hung server ignored SIGTERM
  return { status: r.status, stderr: r.stderr, ms: Date.now() - t0 };
}

describe.runIf(usable)('config file: hostile files', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('refuses a FIFO, a device and a huge file at start-up, at once', () => {
    assertBuilt();
    const fifo = tmp.file('fifo.toml');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const r1 = serveConfig(fifo);
    expect(r1.status, r1.stderr).toBe(1);
    expect(r1.stderr).toContain(`${fifo}: cannot read config: a FIFO (named pipe), not a regular file: refused`);
    expect(r1.ms).toBeLessThan(10_000);

    const r2 = serveConfig('/dev/zero');
    expect(r2.status, r2.stderr).toBe(1);
    expect(r2.stderr).toContain('/dev/zero: cannot read config: a character device, not a regular file: refused');

    const huge = tmp.file('huge.toml');
    writeFileSync(huge, `# ${'x'.repeat(77)}\n`.repeat(64 * 1024)); // 5 MiB of comments
    const r3 = serveConfig(huge);
    expect(r3.status, r3.stderr).toBe(1);
    expect(r3.stderr).toContain(`${huge}: cannot read config: 5242880 bytes is larger than the 4194304-byte limit for a config file: refused`);

    // The admin token file is read the same way.
    createPatternedImage(tmp.file('t.img'), 1 << 20, 5);
    const t0 = Date.now();
    const r4 = spawnSync(process.execPath, [CLI_PATH, 'serve', tmp.file('t.img'), '-p', '0', '--admin', '127.0.0.1:0', '--admin-token-file', fifo], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' }); // SIGKILL: a hung server ignored SIGTERM
    expect(r4.status, r4.stderr).toBe(1);
    expect(r4.stderr).toContain(`admin token file ${fifo}: a FIFO (named pipe), not a regular file: refused`);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('a config replaced by a FIFO fails the reload at once (SIGHUP and API), keeps serving, and SIGTERM stops the server', async () => {
    createPatternedImage(tmp.file('a.img'), 1 << 20, 4);
    const sock = tmp.file('admin.sock');
    const config = tmp.file('c.toml');
    writeFileSync(config, `[server]\nadmin = "unix:${sock}"\n[[export]]\nname = "a"\npath = "a.img"\n`);
    const srv = await startServer(['--config', config]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      unlinkSync(config);
      expect(spawnSync('mkfifo', [config]).status).toBe(0);

      srv.proc.kill('SIGHUP');
      await waitFor(() => serverLog(srv).some((l) => l.msg === 'reload failed: configuration unchanged'), 'the failed reload in the log', 5_000);
      const failed = serverLog(srv).find((l) => l.msg === 'reload failed: configuration unchanged')!;
      expect(failed.reason).toBe(`${config}: cannot read config: a FIFO (named pipe), not a regular file: refused`);

      const t0 = Date.now();
      const viaApi = await api({ socketPath: sock }, 'POST', '/reload');
      expect(viaApi.status).toBe(422);
      expect(viaApi.body.error).toContain('a FIFO (named pipe), not a regular file');
      expect(Date.now() - t0).toBeLessThan(5_000);

      // Still serving export "a" as before.
      const out = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.get_size())
`, { URI: srv.uri('a') });
      expect(out.trim()).toBe(String(1 << 20));

      const stopped = Date.now();
      expect(await srv.stop('SIGTERM')).toBe(0);
      expect(Date.now() - stopped).toBeLessThan(8_000);
    } finally {
      await srv.stop();
    }
  });
});
