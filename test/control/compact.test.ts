/**
 * Compaction of snapshot layers (issue 26, item 3), black-box: a real server, a real
 * client (python3-libnbd) keeping a model of every byte it wrote.
 *
 * The client writes and reads (FUA writes, FLUSHes, zeroes, unaligned lengths) while 5
 * live snapshots are taken; a compaction while it is connected is refused (409: not
 * live); once it has left, POST /exports/vm1/compact merges the 5 frozen layers into one.
 * Then every byte is verified against the model, `cownbd check` is clean on every
 * remaining layer, the base is unchanged, and a restarted server serves the same bytes.
 * `cownbd ctl compact --keep N` and the refusals (no layers, bad keep) on a static export.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createCow } from '../../src/formats/cow/index.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { api, ctl, waitFor, type HttpReply } from './control-helpers.js';
import { HTTP, VERIFY, WRITER } from './compact-scripts.js';

const SIZE = 8 << 20;

/** The client has hung up, but its release (flush, close) may still be running: 409 until then. */
async function compactOnceReleased(A: { socketPath: string }, url: string): Promise<HttpReply> {
  let r = await api(A, 'POST', url);
  for (const end = Date.now() + 10_000; r.status === 409 && Date.now() < end; r = await api(A, 'POST', url)) await new Promise((res) => setTimeout(res, 50));
  return r;
}

function sha(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

function check(file: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [CLI_PATH, 'check', file], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe.runIf(requireNbdPython())('compaction of snapshot layers', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('merges 5 snapshot layers written under FUA/FLUSH into one: every byte kept, check clean, base unchanged, survives a restart', async () => {
    const base = createPatternedImage(tmp.file('golden.img'), SIZE, 11);
    const baseSha = sha(base);
    const sock = tmp.file('admin.sock');
    const dir = tmp.file('vms');
    const model = tmp.file('model.bin');
    const args = ['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`];
    let srv: RunningServer = await startServer(args);
    const A = { socketPath: sock };
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const w = JSON.parse(await nbdPython(WRITER, { URI: srv.uri('vm1'), SOCK: sock, BASE: base, MODEL: model, SIZE, ROUNDS: 5, SEED: 26 }, 120_000)) as {
        snapshots: number[];
        refused: [number, { error: string }];
      };
      expect(w.snapshots).toEqual([201, 201, 201, 201, 201]);
      // Not live: refused while the client is connected, like reset without force.
      expect(w.refused[0]).toBe(409);
      expect(w.refused[1].error).toBe('export "vm1" has 1 connected client(s); add ?force=true to disconnect them');
      expect(readdirSync(dir).sort()).toEqual(['vm1.cow', 'vm1.snap-1.cow', 'vm1.snap-2.cow', 'vm1.snap-3.cow', 'vm1.snap-4.cow', 'vm1.snap-5.cow']);

      const r = await compactOnceReleased(A, '/exports/vm1/compact');
      expect(r.status, r.text).toBe(200);
      expect(r.body.after).toEqual([`${dir}/vm1.snap-5.cow`]);
      expect(r.body.merged).toBe(`${dir}/vm1.snap-5.cow`);
      expect(r.body.deleted).toEqual([1, 2, 3, 4].map((i) => `${dir}/vm1.snap-${i}.cow`));
      expect(r.body.bytesCopied).toBeGreaterThan(0);
      expect(readdirSync(dir).sort()).toEqual(['vm1.cow', 'vm1.snap-5.cow']);

      const v = JSON.parse(await nbdPython(VERIFY, { URI: srv.uri('vm1'), MODEL: model }, 60_000)) as { bad: number[] };
      expect(v.bad).toEqual([]);
      // Nothing left to merge: 200, nothing changed.
      const again = await api(A, 'POST', '/exports/vm1/compact');
      expect(again.status, again.text).toBe(200);
      expect(again.body.deleted).toEqual([]);
      expect(again.body.after).toEqual([`${dir}/vm1.snap-5.cow`]);
    } finally {
      await srv.stop();
    }
    for (const f of ['vm1.snap-5.cow', 'vm1.cow']) {
      const c = check(`${dir}/${f}`);
      expect(c.status, `${f}: ${c.out}`).toBe(0);
    }
    expect(sha(base)).toBe(baseSha);

    srv = await startServer(args);
    try {
      const v = JSON.parse(await nbdPython(VERIFY, { URI: srv.uri('vm1'), MODEL: model }, 60_000)) as { bad: number[] };
      expect(v.bad).toEqual([]);
    } finally {
      await srv.stop();
    }
  }, 240_000);

  it('static export: ctl compact --keep, force disconnects, clear refusals', async () => {
    const base = createPatternedImage(tmp.file('g2.img'), SIZE, 12);
    const baseSha = sha(base);
    const sock = tmp.file('admin2.sock');
    const model = tmp.file('model2.bin');
    const config = tmp.file('c.toml');
    await createCow(tmp.file('vm.cow'), { backingFile: base });
    await createCow(tmp.file('plain.cow'), { backingFile: base });
    writeFileSync(config, `[server]\nadmin = "unix:${sock}"\n[[export]]\nname = "vm1"\npath = "vm.cow"\n[[export]]\nname = "plain"\npath = "plain.cow"\n`);
    let srv: RunningServer = await startServer(['--config', config]);
    const A = { socketPath: sock };
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const w = JSON.parse(await nbdPython(WRITER, { URI: srv.uri('vm1'), SOCK: sock, BASE: base, MODEL: model, SIZE, ROUNDS: 4, SEED: 27 }, 120_000)) as { snapshots: number[] };
      expect(w.snapshots).toEqual([201, 201, 201, 201]);
      const none = await api(A, 'POST', '/exports/plain/compact');
      expect(none.status).toBe(400);
      expect(none.body.error).toBe('export "plain" has no snapshot layers: nothing to compact');
      const badKeep = await api(A, 'POST', '/exports/vm1/compact?keep=0');
      expect(badKeep.status).toBe(400);
      expect(badKeep.body.error).toBe('keep must be an integer 1-62 (got "0")');

      const out = await ctl(['--admin', `unix:${sock}`, 'compact', 'vm1', '--keep', '2']);
      expect(out.code, out.stderr).toBe(0);
      const body = JSON.parse(out.stdout) as { after: string[]; deleted: string[] };
      expect(body.after).toEqual([tmp.file('vm.snap-3.cow'), tmp.file('vm.snap-4.cow')]);
      expect(body.deleted).toEqual([tmp.file('vm.snap-1.cow'), tmp.file('vm.snap-2.cow')]);
      const v = JSON.parse(await nbdPython(VERIFY, { URI: srv.uri('vm1'), MODEL: model }, 60_000)) as { bad: number[] };
      expect(v.bad).toEqual([]);

      // A connected client: force disconnects it, then the rest is merged.
      const forced = JSON.parse(await nbdPython(`${HTTP}
h = nbd.NBD(); h.connect_uri(URI)
print(json.dumps(post("/exports/vm1/compact?force=true")))
`, { URI: srv.uri('vm1'), SOCK: sock }, 60_000)) as [number, { disconnected: number; after: string[] }];
      expect(forced[0]).toBe(200);
      expect(forced[1].disconnected).toBe(1);
      expect(forced[1].after).toEqual([tmp.file('vm.snap-4.cow')]);
    } finally {
      await srv.stop();
    }
    for (const f of ['vm.snap-4.cow', 'vm.cow']) {
      const c = check(tmp.file(f));
      expect(c.status, `${f}: ${c.out}`).toBe(0);
    }
    expect(sha(base)).toBe(baseSha);
    srv = await startServer(['--config', config]);
    try {
      const v = JSON.parse(await nbdPython(VERIFY, { URI: srv.uri('vm1'), MODEL: model }, 60_000)) as { bad: number[] };
      expect(v.bad).toEqual([]);
    } finally {
      await srv.stop();
    }
  }, 240_000);

  it('the merged layer stays sparse (holes are not copied as zeros)', async () => {
    const big = 64 << 20;
    const base = createPatternedImage(tmp.file('g3.img'), big, 14);
    const sock = tmp.file('admin3.sock');
    const dir = tmp.file('vms3');
    const srv = await startServer(['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const out = JSON.parse(await nbdPython(`${HTTP}
h = nbd.NBD(); h.connect_uri(URI)
st = []
for i in range(3):
    h.pwrite(bytes([65 + i]) * 4096, i * (16 << 20)); h.flush(); st.append(post("/exports/vm1/snapshot")[0])
h.shutdown()
print(json.dumps(st))
`, { URI: srv.uri('vm1'), SOCK: sock })) as number[];
      expect(out).toEqual([201, 201, 201]);
      const r = await compactOnceReleased({ socketPath: sock }, '/exports/vm1/compact');
      expect(r.status, r.text).toBe(200);
      const merged = statSync(`${dir}/vm1.snap-3.cow`);
      // 3 written blocks, the header and a few bitmap pages; the file's length covers the 64 MiB disk.
      expect(merged.size).toBeGreaterThan(big);
      expect(merged.blocks * 512).toBeLessThan(1 << 20);
      const got = JSON.parse(await nbdPython(`
import nbd, json
h = nbd.NBD(); h.connect_uri(URI)
print(json.dumps([h.pread(4096, i * (16 << 20)) == bytes([65 + i]) * 4096 for i in range(3)]))
`, { URI: srv.uri('vm1') })) as boolean[];
      expect(got).toEqual([true, true, true]);
    } finally {
      await srv.stop();
    }
  }, 120_000);
});
