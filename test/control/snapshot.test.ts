/**
 * Live snapshots through the admin API, black-box with real clients and tools.
 *
 * A writer (python3-libnbd, 8 writes in flight) writes distinct 4 KiB blocks while a
 * snapshot is taken. Afterwards:
 *  - the frozen layer holds exactly a set of blocks and the new top all the others (no
 *    block in both, none lost); every write acknowledged before the request was sent is
 *    in the frozen layer, every write started after the answer is in the top (cownbd map);
 *  - the export reads back everything; uml_moo accepts each layer (merging bottom-up);
 *  - a restart serves the same chain and data; reset goes back to the snapshot.
 * The pause a client sees (its slowest write across the snapshot) is reported.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, runNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { api, waitFor } from './control-helpers.js';

const usable = requireNbdPython() && requireTool('uml_mkcow') && requireTool('uml_moo');
const BLOCK = 4096;
const SIZE = 32 << 20;

const WRITER = `
import nbd, os, time, json, struct
h = nbd.NBD(); h.connect_uri(URI)
def data(i): return struct.pack("<Q", i * 2654435761 % (1 << 64)) * (BLOCK // 8)
pending = {}
log = []
i = 0
stop_at = None
def done(i, t0):
    def cb(err):
        log.append([i, t0, time.time()])
        return 0
    return cb
while True:
    while h.aio_in_flight() >= 8: h.poll(-1)
    if i == 300: open(READY, "w").close()
    if stop_at is None and os.path.exists(STOP): stop_at = i + 300
    if i == stop_at or i == MAXBLOCKS: break
    h.aio_pwrite(data(i), i * BLOCK, completion=done(i, time.time()))
    i += 1
    if i % 50 == 0: time.sleep(0.005)
while h.aio_in_flight() > 0: h.poll(-1)
h.flush()
for j in range(i): assert h.pread(BLOCK, j * BLOCK) == data(j), j
print(json.dumps({"n": i, "log": log}))
`;

/** Blocks (4 KiB indexes) allocated in the named file itself, from `cownbd map --json`. */
function ownBlocks(file: string): Set<number> {
  const out = execFileSync(process.execPath, [CLI_PATH, 'map', '--json', file], { encoding: 'utf8' });
  const doc = JSON.parse(out) as { extents: Array<{ start: number; length: number; depth: number }> };
  const blocks = new Set<number>();
  for (const e of doc.extents) if (e.depth === 1) for (let b = e.start / BLOCK; b < (e.start + e.length) / BLOCK; b++) blocks.add(b);
  return blocks;
}

function expectedBlock(i: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  const v = (BigInt(i) * 2654435761n) % (1n << 64n);
  for (let o = 0; o < BLOCK; o += 8) b.writeBigUInt64LE(v, o);
  return b;
}

describe.runIf(usable)('live snapshot', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('freezes the overlay under a verifying writer; the chain is ordinary and survives a restart', async () => {
    const base = createPatternedImage(tmp.file('base.img'), SIZE, 9);
    const top = tmp.file('vm.cow');
    execFileSync('uml_mkcow', ['-f', top, base]);
    const sock = tmp.file('admin.sock');
    const config = tmp.file('c.toml');
    writeFileSync(config, `[server]\nadmin = "unix:${sock}"\n[[export]]\nname = "vm"\npath = "vm.cow"\n`);
    let srv: RunningServer = await startServer(['--config', config]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const ready = tmp.file('ready');
      const stop = tmp.file('stop');
      const writer = runNbdPython(WRITER, { URI: srv.uri('vm'), BLOCK, READY: ready, STOP: stop, MAXBLOCKS: SIZE / BLOCK });
      await waitFor(() => existsSync(ready), 'the writer');
      const requested = Date.now() / 1000;
      const snap = await api({ socketPath: sock }, 'POST', '/exports/vm/snapshot');
      const answered = Date.now() / 1000;
      writeFileSync(stop, '');
      const w = await writer;
      expect(w.status, w.stderr).toBe(0);
      expect(snap.status, snap.text).toBe(201);
      expect(snap.body).toMatchObject({ export: 'vm', top, frozen: tmp.file('vm.snap-1.cow'), live: true });
      const result = JSON.parse(w.stdout) as { n: number; log: Array<[number, number, number]> };

      const frozen = ownBlocks(tmp.file('vm.snap-1.cow'));
      const fresh = ownBlocks(top);
      for (const b of frozen) expect(fresh.has(b), `block ${b} in both layers`).toBe(false);
      expect(frozen.size + fresh.size).toBe(result.n);
      for (let b = 0; b < result.n; b++) expect(frozen.has(b) || fresh.has(b), `block ${b} lost`).toBe(true);
      for (const [i, submitted, completed] of result.log) {
        if (completed < requested) expect(frozen.has(i), `block ${i} acked before the snapshot`).toBe(true);
        if (submitted > answered) expect(fresh.has(i), `block ${i} written after the snapshot`).toBe(true);
      }
      expect(frozen.size).toBeGreaterThanOrEqual(300);
      expect(fresh.size).toBeGreaterThanOrEqual(300);
      // The pause a client saw: its slowest write while the snapshot ran.
      const during = result.log.filter(([, s, c]) => c >= requested && s <= answered).map(([, s, c]) => (c - s) * 1000);
      const clientPauseMs = Math.max(0, ...during);
      const outside = result.log.filter(([, s, c]) => c < requested || s > answered).map(([, s, c]) => (c - s) * 1000);
      console.log(
        `snapshot pause: server ${snap.body.pauseMs} ms; slowest client write across it ${clientPauseMs.toFixed(1)} ms; ` +
          `slowest write elsewhere ${Math.max(...outside).toFixed(1)} ms (${result.n} writes, 8 in flight)`,
      );

      // uml_moo accepts each layer: merge bottom-up (UML tools know no chains: the upper
      // layer gets the merged lower one as its backing, with the recorded mtime).
      const expected = readFileSync(base);
      for (const b of frozen) expectedBlock(b).copy(expected, b * BLOCK);
      const m1 = tmp.file('m1.img');
      expect(spawnSync('uml_moo', [tmp.file('vm.snap-1.cow'), m1]).status).toBe(0);
      expect(readFileSync(m1).equals(expected)).toBe(true);
      const info = JSON.parse(execFileSync(process.execPath, [CLI_PATH, 'info', '--json', top], { encoding: 'utf8' }));
      expect(info.backing).toMatchObject({ format: 'cow', sizeCheck: 'ok', mtimeCheck: 'ok' });
      utimesSync(m1, info.cow.mtime, info.cow.mtime);
      const m2 = tmp.file('m2.img');
      const moo = spawnSync('uml_moo', ['-b', m1, top, m2], { encoding: 'utf8' });
      expect(moo.status, moo.stderr).toBe(0);
      for (const b of fresh) expectedBlock(b).copy(expected, b * BLOCK);
      expect(readFileSync(m2).equals(expected)).toBe(true);

      // A restart serves the same chain (the frozen layer's mtime still matches) and data.
      expect(await srv.stop()).toBe(0);
      // `check` calls the chain clean (issue 26, item 4: it compared the top with the layer's file length).
      for (const f of [top, tmp.file('vm.snap-1.cow')]) {
        const c = spawnSync(process.execPath, [CLI_PATH, 'check', f], { encoding: 'utf8' });
        expect(c.status, `check ${f}: ${c.stdout}`).toBe(0);
      }
      srv = await startServer(['--config', config]);
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const sum = await nbdPython(`
import nbd, hashlib
h = nbd.NBD(); h.connect_uri(URI)
m = hashlib.sha256()
for off in range(0, h.get_size(), 1 << 20): m.update(h.pread(1 << 20, off))
print(m.hexdigest())
`, { URI: srv.uri('vm') });
      const { createHash } = await import('node:crypto');
      expect(sum.trim()).toBe(createHash('sha256').update(expected).digest('hex'));
      const ex = await api({ socketPath: sock }, 'GET', '/exports/vm');
      expect(ex.body.chain.map((l: { path: string }) => l.path)).toEqual([top, tmp.file('vm.snap-1.cow'), base]);

      // Reset throws the top away: the disk is the snapshot again.
      const reset = await api({ socketPath: sock }, 'POST', '/exports/vm/reset');
      expect(reset.status, reset.text).toBe(200);
      const firstFresh = Math.min(...fresh);
      const afterReset = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.pread(${BLOCK}, ${firstFresh * BLOCK}).hex())
`, { URI: srv.uri('vm') });
      expect(afterReset.trim()).toBe(readFileSync(base).subarray(firstFresh * BLOCK, (firstFresh + 1) * BLOCK).toString('hex'));
    } finally {
      await srv.stop();
    }
  });

  it('per-machine overlays: live and offline snapshots, reconnect reopens the chain, delete removes every layer', async () => {
    const base = createPatternedImage(tmp.file('golden.img'), 8 << 20, 4);
    const sock = tmp.file('admin2.sock');
    const dir = tmp.file('vms');
    const srv = await startServer(['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`]);
    const A = { socketPath: sock };
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      expect((await api(A, 'POST', '/exports/m1/snapshot')).status).toBe(404);
      const out = await nbdPython(`
import nbd, json, urllib.request, socket, http.client
class U(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(SOCK)
h = nbd.NBD(); h.connect_uri(URI)
h.pwrite(b"1" * 4096, 0)
c = U("x"); c.request("POST", "/exports/m1/snapshot"); r = c.getresponse(); snap = json.loads(r.read())
h.pwrite(b"2" * 4096, 4096); h.flush()
print(json.dumps({"status": r.status, "snap": snap, "a": h.pread(1, 0).decode(), "b": h.pread(1, 4096).decode()}))
`, { URI: srv.uri('m1'), SOCK: sock });
      const live = JSON.parse(out);
      expect(live).toMatchObject({ status: 201, a: '1', b: '2', snap: { live: true, frozen: `${dir}/m1.snap-1.cow` } });
      // Reconnect: the provider reopens m1.cow → m1.snap-1.cow → golden.img from the files.
      const offline = await api(A, 'POST', '/exports/m1/snapshot');
      expect(offline.body).toMatchObject({ live: false, frozen: `${dir}/m1.snap-2.cow` });
      const again = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.pread(1, 0).decode() + h.pread(1, 4096).decode())
`, { URI: srv.uri('m1') });
      expect(again.trim()).toBe('12');
      const chain = (await api(A, 'GET', '/exports/m1')).body.chain.map((l: { path: string; allocatedBytes: number }) => [l.path, l.allocatedBytes]);
      expect(chain).toEqual([
        [`${dir}/m1.cow`, 0],
        [`${dir}/m1.snap-2.cow`, 4096],
        [`${dir}/m1.snap-1.cow`, 4096],
        [base, (8 << 20) - 8192],
      ]);
      // Snapshot layers are not exports, and cannot be opened as one.
      const names = (await api(A, 'GET', '/exports')).body.exports.map((e: { name: string }) => e.name);
      expect(names).toEqual(['m1']);
      const refused = spawnSync('nbdinfo', [srv.uri('m1.snap-1')], { encoding: 'utf8' });
      expect(refused.status).not.toBe(0);
      const del = await api(A, 'DELETE', '/exports/m1');
      expect(del.status, del.text).toBe(200);
      expect(del.body.deleted.sort()).toEqual([`${dir}/m1.cow`, `${dir}/m1.snap-1.cow`, `${dir}/m1.snap-2.cow`]);
      for (const f of del.body.deleted) expect(existsSync(f)).toBe(false);
    } finally {
      await srv.stop();
    }
  });
});
