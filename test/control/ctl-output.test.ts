/**
 * `cownbd ctl` on a terminal prints tables, as its help promises: `snapshot`, `reset`,
 * `delete` and `reload` print their result as FIELD/VALUE rows (they printed JSON), and API
 * errors speak in ctl's flags (`--force`), not the API's query string. The terminal is a real
 * pty from util-linux `script`.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createCow } from '../../src/formats/cow/index.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, runNbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { ctl, waitFor } from './control-helpers.js';

const hasScript = requireTool('script');
const usable = requireNbdPython();

/** `cownbd ctl ARGS` with stdout on a pty. */
function ctlOnTerminal(args: string[]): { status: number | null; out: string } {
  const cmd = [process.execPath, CLI_PATH, 'ctl', ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, out: r.stdout.replace(/\r/g, '') };
}

describe.runIf(hasScript && usable)('cownbd ctl output', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('snapshot prints a table on a terminal and JSON on a pipe; a refused reset names --force', async () => {
    const base = createRawImage(tmp.file('base.raw'), 1 << 20);
    const top = tmp.file('vm.cow');
    await createCow(top, { backingFile: base });
    const sock = tmp.file('admin.sock');
    const srv = await startServer([top, '-n', 'vm', '--admin', `unix:${sock}`]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const snap = ctlOnTerminal(['--admin', `unix:${sock}`, 'snapshot', 'vm']);
      expect(snap.status, snap.out).toBe(0);
      expect(snap.out).toMatch(/^FIELD\s+VALUE\n/);
      expect(snap.out).toMatch(/\nfrozen\s+\S+vm\.snap-1\.cow\n/);
      expect(snap.out).not.toContain('{');
      const piped = await ctl(['--admin', `unix:${sock}`, 'snapshot', 'vm']);
      expect(piped.code, piped.stderr).toBe(0);
      expect(JSON.parse(piped.stdout)).toMatchObject({ export: 'vm', frozen: expect.stringMatching(/vm\.snap-2\.cow$/) });

      // A connected client makes reset refuse; the message names ctl's flag.
      const ready = tmp.file('ready');
      const stop = tmp.file('stop');
      const holder = runNbdPython(
        `
import nbd, os, time
h = nbd.NBD(); h.connect_uri(URI)
open(READY, "w").close()
while not os.path.exists(STOP): time.sleep(0.05)
h.shutdown()
`,
        { URI: srv.uri('vm'), READY: ready, STOP: stop },
      );
      await waitFor(() => existsSync(ready), 'the client to connect');
      const refused = await ctl(['--admin', `unix:${sock}`, 'reset', 'vm']);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/connected client\(s\); add --force/);
      expect(refused.stderr).not.toContain('?force=true');
      writeFileSync(stop, '');
      await holder;
    } finally {
      await srv.stop();
    }
  });
});
