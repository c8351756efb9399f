/**
 * Changed-block tracking (qemu:dirty-bitmap:NAME, docs/incremental-backup.md) with the real
 * clients: nbdinfo (--list, --map), python3-libnbd (block_status, opt_list_meta_context),
 * qemu-img map with x-dirty-bitmap, nbdcopy for the full copies.
 *
 *  - "overlay" on a static cow overlay is exactly the bytes written (4 KiB blocks);
 *  - the incremental backup: full copy at snapshot 1, writes, snapshot 2 while a client
 *    that selected snap-1 stays connected, more writes; the ranges snap-1 marks dirty (from
 *    that same connection, and from qemu-img map on a new one), copied onto the old full
 *    copy, give a byte-equal image to a fresh full copy; snap-2 is just the later writes;
 *  - per-machine overlays list their bitmaps (LIST "qemu:" / "qemu:dirty-bitmap:"), SET of
 *    the "qemu:dirty-bitmap:" namespace selects nothing (as qemu-nbd), raw exports have none.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { mustSucceed, nbdcopy, nbdinfo, nbdinfoJson, nbdinfoMap, qemuImg } from '../helpers/clients.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { api, waitFor } from '../control/control-helpers.js';

const usable = requireNbdPython() && requireTool('uml_mkcow') && requireTool('nbdinfo') && requireTool('nbdcopy') && requireTool('qemu-img');
const BLOCK = 4096;
const SIZE = 16 << 20;

type Range = [offset: number, length: number];

/** Sorted, merged [offset, length] ranges. */
function merge(ranges: readonly Range[]): Range[] {
  const out: Range[] = [];
  for (const [o, l] of [...ranges].sort((a, b) => a[0] - b[0])) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] >= o) last[1] = Math.max(last[1], o + l - last[0]);
    else out.push([o, l]);
  }
  return out;
}

/**
 * Python: write `writes` (each [offset, length], a pattern of the offset and `tag`), then
 * print the ranges the context `ctx` marks dirty (flag 1) over the whole disk as JSON.
 */
const WRITE_AND_MAP = `
import nbd, json, os, time
def data(off, n): return bytes((off // 4096 * 7 + TAG + i // 512) % 251 for i in range(n))
def dirty(h):
    out, off, size = [], 0, h.get_size()
    while off < size:
        got = []
        def cb(meta, offset, entries, err):
            if meta == CTX: got.extend(entries)
        h.block_status(min(size - off, 1 << 30), off, cb)
        assert got, "no extents for " + CTX
        for i in range(0, len(got), 2):
            if got[i + 1] & 1: out.append([off, got[i]])
            off += got[i]
    return out
h = nbd.NBD()
h.add_meta_context(CTX)
h.connect_uri(URI)
assert h.can_meta_context(CTX), CTX + " not negotiated"
for off, n in WRITES: h.pwrite(data(off, n), off)
h.flush()
if PAUSE:
    # Asked before the snapshot too: the connection has seen the old chain.
    first = dirty(h)
    open(PAUSE + ".ready", "w").write(json.dumps(first))
    while not os.path.exists(PAUSE + ".go"): time.sleep(0.02)
    for off, n in LATER: h.pwrite(data(off, n), off)
    h.flush()
print(json.dumps(dirty(h)))
`;

async function writeAndMap(uri: string, ctx: string, writes: Range[], tag: number, pause?: { file: string; later: Range[] }): Promise<Range[]> {
  const out = await nbdPython(WRITE_AND_MAP, { URI: uri, CTX: ctx, WRITES: writes, TAG: tag, PAUSE: pause?.file ?? '', LATER: pause?.later ?? [] });
  return JSON.parse(out) as Range[];
}

/** Copy `ranges` of the export onto `file` (what a backup tool does with the dirty ranges). */
async function copyRanges(uri: string, ranges: Range[], file: string): Promise<void> {
  await nbdPython(
    `
import nbd, os
h = nbd.NBD(); h.connect_uri(URI)
fd = os.open(FILE, os.O_WRONLY)
for off, n in RANGES: os.pwrite(fd, h.pread(n, off), off)
os.fsync(fd); os.close(fd)
`,
    { URI: uri, RANGES: ranges, FILE: file },
  );
}

/** Dirty ranges as qemu-img map reports them through x-dirty-bitmap (dirty = "data": false). */
async function qemuDirty(port: number, exportName: string, ctx: string): Promise<Range[]> {
  const opts = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=${exportName},x-dirty-bitmap=${ctx}`;
  const r = mustSucceed(await qemuImg(['map', '--output=json', '--image-opts', opts]));
  const entries = JSON.parse(r.stdout) as Array<{ start: number; length: number; data: boolean }>;
  return merge(entries.filter((e) => !e.data).map((e): Range => [e.start, e.length]));
}

describe.runIf(usable)('qemu:dirty-bitmap contexts', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('"overlay" on a static cow overlay marks exactly the blocks written (libnbd, nbdinfo, qemu-img)', async () => {
    const base = createPatternedImage(tmp.file('a-base.img'), SIZE, 3);
    const top = tmp.file('a.cow');
    execFileSync('uml_mkcow', ['-f', top, base]);
    const srv = await startServer([top]);
    try {
      const writes: Range[] = [
        [0, BLOCK],
        [5 * BLOCK, 3 * BLOCK],
        [7 * BLOCK, 2 * BLOCK], // overlaps the previous one
        [1 << 20, 64 * 1024],
        [SIZE - BLOCK, BLOCK],
      ];
      const dirty = await writeAndMap(srv.uri(), 'qemu:dirty-bitmap:overlay', writes, 1);
      const expected = merge(writes);
      expect(merge(dirty)).toEqual(expected);

      const map = await nbdinfoMap(srv.uri(), 'qemu:dirty-bitmap:overlay');
      expect(merge(map.filter((e) => e.type === 1).map((e): Range => [e.offset, e.length]))).toEqual(expected);
      expect(map.filter((e) => e.type === 1).every((e) => e.description === 'dirty')).toBe(true);
      expect(await qemuDirty(srv.port!, '', 'qemu:dirty-bitmap:overlay')).toEqual(expected);

      const listed = await nbdinfoJson(srv.uri(), ['--list']);
      expect(listed.exports[0]!.contexts).toEqual(['base:allocation', 'qemu:allocation-depth', 'qemu:dirty-bitmap:overlay']);
    } finally {
      await srv.stop();
    }
  });

  it('an incremental backup driven by qemu:dirty-bitmap:snap-1 reproduces the image, across a snapshot taken mid-connection', async () => {
    const base = createPatternedImage(tmp.file('golden.img'), SIZE, 9);
    execFileSync('uml_mkcow', ['-f', tmp.file('vm.cow'), base]);
    const sock = tmp.file('admin.sock');
    const config = tmp.file('c.toml');
    writeFileSync(
      config,
      `[server]\nadmin = "unix:${sock}"\n[[export]]\nname = "vm"\npath = "vm.cow"\n[[export]]\nname = "gold"\npath = "golden.img"\nread-only = true\n`,
    );
    const srv = await startServer(['--config', config]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const uri = srv.uri('vm');
      // Before the first backup: the machine has run for a while.
      const before: Range[] = [
        [0, 4 * BLOCK],
        [2 << 20, 128 * 1024],
        [9 << 20, BLOCK],
      ];
      await writeAndMap(uri, 'qemu:dirty-bitmap:overlay', before, 1);

      const snap1 = await api({ socketPath: sock }, 'POST', '/exports/vm/snapshot');
      expect(snap1.status, snap1.text).toBe(201);
      expect(snap1.body.dirtyBitmap).toBe('qemu:dirty-bitmap:snap-1');
      const full = tmp.file('full.img');
      mustSucceed(await nbdcopy([uri, full]));

      // A client selects snap-1, writes; snapshot 2 is taken while it stays connected; it
      // writes more and asks again: the answer must still mean "since snapshot 1".
      const w1: Range[] = [
        [BLOCK, BLOCK], // inside a range written before snapshot 1
        [3 << 20, 3 * BLOCK],
        [SIZE - 2 * BLOCK, 2 * BLOCK],
      ];
      const w2: Range[] = [
        [2 * BLOCK, BLOCK],
        [(2 << 20) + 8 * BLOCK, 16 * BLOCK],
        [12 << 20, 5 * BLOCK],
      ];
      const pause = tmp.file('pause');
      const mapping = writeAndMap(uri, 'qemu:dirty-bitmap:snap-1', w1, 2, { file: pause, later: w2 });
      await waitFor(() => existsSync(`${pause}.ready`), 'the first writes', 30_000);
      const snap2 = await api({ socketPath: sock }, 'POST', '/exports/vm/snapshot');
      expect(snap2.status, snap2.text).toBe(201);
      expect(snap2.body).toMatchObject({ live: true, dirtyBitmap: 'qemu:dirty-bitmap:snap-2' });
      writeFileSync(`${pause}.go`, '');
      const sinceSnap1 = merge(await mapping);
      expect(merge(JSON.parse(readFileSync(`${pause}.ready`, 'utf8')) as Range[]), 'before snapshot 2').toEqual(merge(w1));
      expect(sinceSnap1, 'after snapshot 2, same connection').toEqual(merge([...w1, ...w2]));

      // A new connection, another client: the same answer from qemu-img; snap-2 and
      // overlay keep their own meanings.
      expect(await qemuDirty(srv.port!, 'vm', 'qemu:dirty-bitmap:snap-1')).toEqual(sinceSnap1);
      expect(await qemuDirty(srv.port!, 'vm', 'qemu:dirty-bitmap:snap-2')).toEqual(merge(w2));
      expect(await qemuDirty(srv.port!, 'vm', 'qemu:dirty-bitmap:overlay')).toEqual(merge([...before, ...w1, ...w2]));

      // The incremental backup: only the dirty ranges onto the old full copy.
      const incremental = tmp.file('incremental.img');
      copyFileSync(full, incremental);
      await copyRanges(uri, sinceSnap1, incremental);
      const fresh = tmp.file('fresh.img');
      mustSucceed(await nbdcopy([uri, fresh]));
      expect(readFileSync(full).equals(readFileSync(fresh)), 'the writes after snapshot 1 changed something').toBe(false);
      expect(readFileSync(incremental).equals(readFileSync(fresh)), 'incremental copy equals a full copy').toBe(true);

      // Both snapshots are listed; the raw export has no bitmap.
      const listed = await nbdinfoJson(srv.uri(), ['--list']);
      const contexts = (name: string) => listed.exports.find((e) => e['export-name'] === name)!.contexts;
      expect(contexts('vm')).toEqual([
        'base:allocation',
        'qemu:allocation-depth',
        'qemu:dirty-bitmap:overlay',
        'qemu:dirty-bitmap:snap-1',
        'qemu:dirty-bitmap:snap-2',
      ]);
      expect(contexts('gold')).toEqual(['base:allocation', 'qemu:allocation-depth']);
      const refused = await nbdinfo(['--map=qemu:dirty-bitmap:snap-1', srv.uri('gold')]);
      expect(refused.code, refused.stdout).not.toBe(0);
    } finally {
      await srv.stop();
    }
  });

  it('per-machine overlays list their bitmaps as qemu-nbd does: "qemu:" and "qemu:dirty-bitmap:" list, SET takes exact names', async () => {
    const base = createPatternedImage(tmp.file('pm-golden.img'), SIZE, 5);
    const dir = tmp.file('vms');
    const sock = tmp.file('pm-admin.sock');
    const srv = await startServer(['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const uri = srv.uri('vm1');
      await writeAndMap(uri, 'qemu:dirty-bitmap:overlay', [[0, BLOCK]], 1);
      const snap = await api({ socketPath: sock }, 'POST', '/exports/vm1/snapshot');
      expect(snap.status, snap.text).toBe(201);
      expect(snap.body.dirtyBitmap).toBe('qemu:dirty-bitmap:snap-1');
      expect(merge(await writeAndMap(uri, 'qemu:dirty-bitmap:snap-1', [[8 * BLOCK, BLOCK]], 2))).toEqual([[8 * BLOCK, BLOCK]]);

      const out = await nbdPython(
        `
import nbd, json
def listed(queries):
    h = nbd.NBD(); h.set_opt_mode(True)
    for q in queries: h.add_meta_context(q)
    h.connect_uri(URI)
    names = []
    h.opt_list_meta_context(lambda name: names.append(name))
    h.opt_abort()
    return names
def selected(query):
    h = nbd.NBD(); h.add_meta_context(query); h.connect_uri(URI)
    r = [c for c in ["qemu:dirty-bitmap:overlay", "qemu:dirty-bitmap:snap-1"] if h.can_meta_context(c)]
    h.shutdown()
    return r
print(json.dumps({
    "qemu": listed(["qemu:"]),
    "bitmaps": listed(["qemu:dirty-bitmap:"]),
    "exact": listed(["qemu:dirty-bitmap:snap-1", "qemu:dirty-bitmap:snap-9"]),
    "setNamespace": selected("qemu:dirty-bitmap:"),
    "setExact": selected("qemu:dirty-bitmap:snap-1"),
}))
`,
        { URI: uri },
      );
      expect(JSON.parse(out)).toEqual({
        qemu: ['qemu:allocation-depth', 'qemu:dirty-bitmap:overlay', 'qemu:dirty-bitmap:snap-1'],
        bitmaps: ['qemu:dirty-bitmap:overlay', 'qemu:dirty-bitmap:snap-1'],
        exact: ['qemu:dirty-bitmap:snap-1'],
        setNamespace: [],
        setExact: ['qemu:dirty-bitmap:snap-1'],
      });
      // A new machine's overlay: "overlay" is offered and all clean.
      const fresh = await nbdinfoJson(srv.uri('vm2'));
      expect(fresh.exports[0]!.contexts).toContain('qemu:dirty-bitmap:overlay');
      const empty = await nbdinfoMap(srv.uri('vm2'), 'qemu:dirty-bitmap:overlay');
      expect(empty.every((e) => e.type === 0)).toBe(true);
    } finally {
      await srv.stop();
    }
  });
});
