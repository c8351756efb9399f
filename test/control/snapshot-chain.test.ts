/**
 * Snapshot chains stay cheap and bounded (issue 26, item 3), black-box:
 *  - the server opens a chain of DEPTH snapshot layers with O(DEPTH) file opens, counted
 *    by strace on the real `serve` process (each layer used to open the chain below it
 *    twice: 3·2^depth opens);
 *  - the admin API refuses the snapshot that would pass --max-snapshots (409, naming the
 *    limit), and the limit itself is validated on the command line and in the config.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { createCow } from '../../src/formats/cow/index.js';
import { stackCowLayer } from '../../src/formats/cow/cow-layers.js';
import { nbdinfo } from '../helpers/clients.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { api, waitFor } from './control-helpers.js';

const DEPTH = 14;

describe.runIf(requireTool('strace') && requireTool('nbdinfo'))('snapshot chain open cost', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it(`opens a chain of ${DEPTH} snapshot layers with O(depth) file opens`, async () => {
    const size = 4 << 20;
    const base = createPatternedImage(tmp.file('base.img'), size, 7);
    const top = tmp.file('vm.cow');
    await createCow(top, { backingFile: base });
    for (let i = 0; i < DEPTH; i++) await stackCowLayer(top, size);
    const config = tmp.file('c.toml');
    writeFileSync(config, `[[export]]\nname = "vm"\npath = "vm.cow"\n`);
    const trace = tmp.file('strace.log');
    // The export is opened at start-up: the opens counted are the chain's.
    const srv = await startServer(['--config', config], { wrap: ['strace', '-f', '-qq', '-e', 'trace=openat,open', '-o', trace], timeoutMs: 60_000 });
    try {
      const info = await nbdinfo(['--size', srv.uri('vm')]);
      expect(info.stdout.trim(), info.stderr).toBe(String(size));
    } finally {
      await srv.stop();
    }
    const opens = readFileSync(trace, 'utf8')
      .split('\n')
      .filter((l) => l.includes(`"${tmp.path}/`) && !l.includes('ENOENT') && !l.includes('strace.log') && !l.includes('c.toml'));
    const layers = DEPTH + 2; // the top, the snapshot layers, the base
    console.log(`chain of ${layers} layers: ${opens.length} file opens (${(opens.length / layers).toFixed(1)} per layer)`);
    expect(opens.length, opens.slice(0, 40).join('\n')).toBeLessThanOrEqual(4 * layers);
    expect(opens.length).toBeGreaterThanOrEqual(layers);
  }, 120_000);
});

describe.runIf(requireNbdPython())('--max-snapshots', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('refuses the snapshot that would pass the limit, live or offline; the limit is validated', async () => {
    const base = createPatternedImage(tmp.file('golden.img'), 4 << 20, 8);
    const sock = tmp.file('admin.sock');
    const dir = tmp.file('vms');
    const srv = await startServer(['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`, '--max-snapshots', '2']);
    const A = { socketPath: sock };
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
h.pwrite(b"x" * 4096, 0); h.flush()
`, { URI: srv.uri('vm1') });
      expect((await api(A, 'POST', '/exports/vm1/snapshot')).status).toBe(201);
      expect((await api(A, 'POST', '/exports/vm1/snapshot')).status).toBe(201);
      const refused = await api(A, 'POST', '/exports/vm1/snapshot');
      expect(refused.status, refused.text).toBe(409);
      expect(refused.body.error).toBe(
        'export "vm1" already has 2 snapshot layers (--max-snapshots 2): compact (merge its oldest layers), reset or delete it before taking another',
      );
      // Live (a client connected): the same refusal, and the client goes on.
      const live = await nbdPython(`
import nbd, json, socket, http.client
class U(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(SOCK)
h = nbd.NBD(); h.connect_uri(URI)
c = U("x"); c.request("POST", "/exports/vm1/snapshot"); r = c.getresponse(); r.read()
h.pwrite(b"y" * 4096, 4096); h.flush()
print(json.dumps({"status": r.status, "a": h.pread(1, 0).decode(), "b": h.pread(1, 4096).decode()}))
`, { URI: srv.uri('vm1'), SOCK: sock });
      expect(JSON.parse(live)).toEqual({ status: 409, a: 'x', b: 'y' });
      expect(statSync(`${dir}/vm1.snap-2.cow`).isFile()).toBe(true);
      expect(() => statSync(`${dir}/vm1.snap-3.cow`)).toThrow();
    } finally {
      await srv.stop();
    }

    // The limit: at most 62 (a chain has at most 64 layers), at least 1, on the command line and in a config.
    const tooMany = spawnSync(process.execPath, [CLI_PATH, 'serve', '--base', base, '--overlay-dir', dir, '--max-snapshots', '63'], { encoding: 'utf8', timeout: 20_000 });
    expect(tooMany.status).not.toBe(0);
    expect(tooMany.stderr).toContain('--max-snapshots must be at most 62');
    const config = tmp.file('bad.toml');
    writeFileSync(config, `[limits]\nmax-snapshots = 0\n[overlays]\nbase = "golden.img"\ndir = "vms"\n`);
    const badConfig = spawnSync(process.execPath, [CLI_PATH, 'serve', '--config', config], { encoding: 'utf8', timeout: 20_000 });
    expect(badConfig.status).not.toBe(0);
    expect(badConfig.stderr).toMatch(/limits\.max-snapshots.*must be at least 1/);
  }, 60_000);
});
