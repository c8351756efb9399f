/**
 * Journey 3: a Linux machine attaches a cownbd export with `nbd-client -C 4` and the
 * kernel's nbd driver. test/e2e/kernel-client.test.ts runs the real client in a QEMU guest
 * (slow, small disk); this file REPLAYS it with python3-libnbd (fast, a 6 GiB disk, the
 * kernel's limits), configured to negotiate exactly what nbd-client 3.24 negotiates and to
 * send what drivers/block/nbd.c sends (measured facts: docs/kernel-client.md):
 *
 *   handshake  fixed newstyle + NO_ZEROES, NBD_OPT_GO with ZERO info requests,
 *              no STRUCTURED_REPLY (simple replies only), no meta contexts
 *              (libnbd: set_request_structured_replies(False), set_request_block_size(False),
 *              set_full_info(False); nothing else is requested by libnbd 1.14)
 *   transfer   512-byte aligned READ/WRITE, many in flight (blk-mq tags, out-of-order
 *              completion), requests of 128 KiB (the default max_sectors_kb) and up to
 *              32 MiB (max_hw_sectors = 65536, reached only with a raised max_sectors_kb),
 *              WRITE+FUA (ext4 journal commits), FLUSH, a TRIM of nearly 4 GiB (max discard
 *              = UINT_MAX bytes, 512-rounded), the partition-table probe of the first and
 *              last sectors, DISC at detach
 *   multi-conn 4 connections each with its own GO, writes spread over them (one hardware
 *              queue per CPU, each with its own connection); one fsync sends ONE FLUSH on
 *              ONE connection, so that flush must cover what every connection wrote
 *
 * The export is a 6 GiB sparse raw file so offsets above 4 GiB and the huge TRIM are
 * real. Data is asserted three ways: by the writing connections, by a fresh connection
 * after everything, and by reading the served file itself after the server stopped
 * (sha256 of every written region, as computed by the client).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createRawImage, makeTempDir, pattern, sha256, type TempDir } from '../helpers/images.js';
import { CLI_PATH, requireNbdPython, runNbdPython } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { serveImage, serverLog, type Target } from '../helpers/clients.js';

const GiB = 1024 ** 3;
const MiB = 1024 * 1024;
const SIZE = 6 * GiB;

/** Shared prelude: a handle that negotiates like nbd-client 3.24 + the kernel. */
const PRELUDE = String.raw`
import nbd, os, json, hashlib, time, sys

def kernel_handle():
    h = nbd.NBD()
    h.set_request_structured_replies(False)   # the kernel parses simple replies only
    h.set_request_block_size(False)           # nbd-client sends GO with no info requests
    h.set_full_info(False)
    h.set_handshake_flags(nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE | nbd.HANDSHAKE_FLAG_NO_ZEROES)
    h.connect_uri(URI)
    assert h.get_protocol() == "newstyle-fixed", h.get_protocol()
    assert not h.get_structured_replies_negotiated(), "structured replies must not be negotiated"
    return h

def data(seed, length):
    # Deterministic, position-independent random-looking bytes (sha256 counter mode).
    out = bytearray()
    i = 0
    while len(out) < length:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest() * 64
        i += 1
    return bytes(out[:length])

def sha(b):
    return hashlib.sha256(b).hexdigest()

def wait_all(h):
    while h.aio_in_flight() > 0:
        h.poll(-1)

def check_sectors(off, length):
    assert off % 512 == 0 and length % 512 == 0, (off, length)
`;

/**
 * Phase 1 (one connection): probe, many in-flight 512-aligned writes, 32 MiB requests,
 * FUA, FLUSH, a ~4 GiB TRIM, writes above 4 GiB. Prints a JSON record of every region
 * it wrote (offset, length, sha256) for the later checks.
 */
const PHASE1 = String.raw`
h = kernel_handle()
size = h.get_size()
flags = {k: getattr(h, k)() for k in ["can_flush", "can_fua", "can_trim", "can_multi_conn", "can_df", "is_read_only"]}
regions = []

# Partition-table probe: the kernel reads the first and the last sectors right away.
t0 = time.time()
first = h.pread(4096, 0)
last = h.pread(4096, size - 4096)
probe_ms = (time.time() - t0) * 1000

# Many requests in flight, sizes 512 B .. 128 KiB, all 512-aligned, scattered in [0, 64 MiB).
bufs = []
off = 0
for i in range(96):
    length = 512 * (1 + (i * 37) % 256)
    check_sectors(off, length)
    payload = data(1000 + i, length)
    buf = nbd.Buffer.from_bytearray(bytearray(payload))
    bufs.append(buf)
    h.aio_pwrite(buf, off, flags=(nbd.CMD_FLAG_FUA if i % 7 == 0 else 0))
    regions.append({"offset": off, "length": length, "sha256": sha(payload)})
    off += length + 512 * ((i * 13) % 9)   # leave some untouched gaps
assert off < 64 * 2**20
wait_all(h)
# Read them all back with reads in flight too (completions may come out of order).
reads = []
for r in regions:
    b = nbd.Buffer(r["length"])
    h.aio_pread(b, r["offset"])
    reads.append((r, b))
wait_all(h)
for r, b in reads:
    got = sha(bytes(b.to_bytearray()))
    assert got == r["sha256"], "in-flight readback mismatch at %d+%d" % (r["offset"], r["length"])

# The largest request the kernel sends: 32 MiB, written with FUA, read back in one READ.
big_off = 128 * 2**20
big = data(7, 32 * 2**20)
h.pwrite(big, big_off, nbd.CMD_FLAG_FUA)
assert sha(h.pread(len(big), big_off)) == sha(big), "32 MiB readback mismatch"
regions.append({"offset": big_off, "length": len(big), "sha256": sha(big)})

# A TRIM of nearly 4 GiB (UINT_MAX rounded down to 512 bytes), like fstrim / mkfs discard.
trim_off = 1 * 2**30
trim_len = 0xFFFFFE00
inside = data(60, 2 * 2**20)
h.pwrite(inside, 2 * 2**30)         # will be trimmed: contents undefined afterwards
before = data(61, 512 * 1024)
after = data(62, 512 * 1024)
h.pwrite(before, trim_off - len(before))
h.pwrite(after, trim_off + trim_len)
regions.append({"offset": trim_off - len(before), "length": len(before), "sha256": sha(before)})
regions.append({"offset": trim_off + trim_len, "length": len(after), "sha256": sha(after)})
t0 = time.time()
h.trim(trim_len, trim_off)
trim_ms = (time.time() - t0) * 1000
h.flush()
# Neighbours of the trimmed range are untouched; a write inside it afterwards works.
assert h.pread(len(before), trim_off - len(before)) == before, "TRIM damaged the data before it"
assert h.pread(len(after), trim_off + trim_len) == after, "TRIM damaged the data after it"
rewrite = data(63, 1024 * 1024)
h.pwrite(rewrite, 3 * 2**30, nbd.CMD_FLAG_FUA)
assert h.pread(len(rewrite), 3 * 2**30) == rewrite
regions.append({"offset": 3 * 2**30, "length": len(rewrite), "sha256": sha(rewrite)})

# Writes above 4 GiB (64-bit offsets; the TRIM above ended just below 5 GiB), the last sector included.
for i, o in enumerate([4 * 2**30 + 512, 5 * 2**30 + 3 * 2**20, size - 1024 * 1024]):
    p = data(50 + i, 1024 * 1024)
    h.pwrite(p, o)
    regions.append({"offset": o, "length": len(p), "sha256": sha(p)})
h.flush()

h.shutdown()   # NBD_CMD_DISC, as at detach
print(json.dumps({"size": size, "flags": flags, "probe_ms": probe_ms, "trim_ms": trim_ms,
                  "first": sha(first), "last_zero": last == bytes(4096), "regions": regions}))
`;

/** Phase 2: nbd-client -C 4: four connections write disjoint regions, ONE FLUSH on one of them. */
const PHASE2 = String.raw`
handles = [kernel_handle() for _ in range(NCONN)]
for h in handles:
    assert h.can_multi_conn(), "CAN_MULTI_CONN must be advertised for nbd-client -C"
regions = []
# Each CPU's hardware queue has its own connection; writes from several CPUs spread over them.
chunk = 1024 * 1024
bufs = []
for n in range(NCONN * 12):
    h = handles[n % NCONN]
    off = MC_BASE + n * chunk
    payload = data(2000 + n, chunk)
    buf = nbd.Buffer.from_bytearray(bytearray(payload))
    bufs.append(buf)
    h.aio_pwrite(buf, off)
    regions.append({"offset": off, "length": chunk, "sha256": sha(payload), "conn": n % NCONN})
for h in handles:
    wait_all(h)
# One fsync: the kernel sends a single FLUSH on one connection (measured; not one per
# connection), after every write completed. CAN_MULTI_CONN promises it covers all of them.
handles[NCONN - 1].flush()
# Multi-conn coherence: after the flushes, every connection sees every connection's data.
for i, h in enumerate(handles):
    for r in regions:
        if r["conn"] != i and r["offset"] % (3 * chunk) == 0:
            assert sha(h.pread(r["length"], r["offset"])) == r["sha256"], \
                "conn %d does not see conn %d's write at %d" % (i, r["conn"], r["offset"])
for h in handles:
    h.shutdown()
print(json.dumps({"regions": regions}))
`;

/** Phase 3: a fresh connection verifies every region written before. */
const VERIFY = String.raw`
h = kernel_handle()
bad = []
for r in REGIONS:
    got = h.pread(r["length"], r["offset"])
    if sha(got) != r["sha256"]:
        bad.append(r["offset"])
h.shutdown()
print(json.dumps({"checked": len(REGIONS), "bad": bad}))
`;

interface Region {
  offset: number;
  length: number;
  sha256: string;
}

function fileRegionSha(file: string, r: Region): string {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(r.length);
    let done = 0;
    while (done < r.length) {
      const n = readSync(fd, buf, done, r.length - done, r.offset + done);
      if (n === 0) break;
      done += n;
    }
    return createHash('sha256').update(buf).digest('hex');
  } finally {
    closeSync(fd);
  }
}

async function py(script: string, vars: Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await runNbdPython(`${PRELUDE}\n${script}`, vars, 90_000);
  if (r.status !== 0) throw new Error(`replay script failed (status ${r.status}):\n${r.stderr}\n${r.stdout}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
}

type Format = 'raw' | 'cow' | 'add-cow';

/** The export under test: a raw disk, or an overlay (UML cow / add-cow) over a raw base. */
function makeDisk(tmp: TempDir, format: Format): { image: string; base: string; data: string } {
  // 6 GiB sparse; sector 0 holds an "MBR-like" marker so the probe reads real data.
  const base = createRawImage(tmp.file('base6g.raw'), SIZE, [[0, 4096]], 77);
  if (format === 'raw') return { image: base, base, data: base };
  if (format === 'cow') {
    const image = tmp.file('vm.cow');
    execFileSync('uml_mkcow', [image, base]);
    return { image, base, data: image };
  }
  const image = tmp.file('vm.add-cow');
  const data = tmp.file('vm.img');
  execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'add-cow', '--image', data, '-b', base, '-F', 'raw', image]);
  return { image, base, data };
}

const FORMATS: Format[] = ['raw', 'cow', 'add-cow'];
const usable = requireNbdPython() && requireTool('uml_mkcow');

describe.runIf(usable).each(FORMATS)('kernel nbd client replay (nbd-client 3.24 + drivers/block/nbd.c) on %s', (format) => {
  let tmp: TempDir;
  let disk: { image: string; base: string; data: string };
  let baseBefore: { mtimeMs: number; blocks: number; head: string };
  let target: Target | undefined;
  const written: Region[] = [];
  const reference = process.env.COWNBD_INTEROP_TARGET !== undefined;

  const serve = () =>
    // trace logging: the server logs every option and request, so the replay can be proven faithful.
    serveImage(disk.image, { name: 'vda', extraArgs: ['--log-level', 'trace'] });

  beforeAll(async () => {
    tmp = makeTempDir();
    disk = makeDisk(tmp, format);
    const st = statSync(disk.base);
    baseBefore = { mtimeMs: st.mtimeMs, blocks: st.blocks, head: fileRegionSha(disk.base, { offset: 0, length: 4096, sha256: '' }) };
    target = await serve();
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it.skipIf(reference && format !== 'raw')('single connection: simple replies, in-flight 512-aligned I/O, 32 MiB requests, FUA, FLUSH, ~4 GiB TRIM', async () => {
    const out = (await py(PHASE1, { URI: target!.uri })) as {
      size: number;
      flags: Record<string, boolean>;
      probe_ms: number;
      trim_ms: number;
      first: string;
      last_zero: boolean;
      regions: Region[];
    };
    expect(out.size).toBe(SIZE);
    // DF must be clear without structured replies; the kernel needs FLUSH/FUA/TRIM.
    expect(out.flags).toEqual({
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_multi_conn: true,
      can_df: false,
      is_read_only: false,
    });
    expect(out.first, 'the probe of sector 0 returns the image data').toBe(sha256(pattern(0, 4096, 77)));
    expect(out.last_zero).toBe(true);
    expect(out.probe_ms).toBeLessThan(5000);
    // A 4 GiB TRIM must be cheap (punch a hole / mark the range), not 4 GiB of zero writes.
    expect(out.trim_ms).toBeLessThan(15_000);
    expect(out.regions.length).toBeGreaterThan(90);
    written.push(...out.regions);
  });

  it.skipIf(reference && format !== 'raw')('nbd-client -C 4: four connections write disjoint regions, one FLUSH on one connection, all see each other', async () => {
    const out = (await py(PHASE2, { URI: target!.uri, NCONN: 4, MC_BASE: 5 * GiB - 64 * MiB })) as { regions: Region[] };
    expect(out.regions).toHaveLength(48);
    written.push(...out.regions);
  });

  it.skipIf(reference)('the server saw exactly the kernel client\'s dialect (from its trace log)', () => {
    const log = serverLog(target!);
    const options = log.filter((l) => l.msg === 'option');
    const requests = log.filter((l) => l.msg === 'request');
    expect(options.length).toBeGreaterThanOrEqual(5);
    // Only GO, each with no info requests: u32 namelen + "vda" + u16 nrinfos(0) = 9 bytes.
    expect([...new Set(options.map((o) => o.option))]).toEqual(['GO']);
    expect(options.every((o) => o.length === 4 + 'vda'.length + 2)).toBe(true);
    const phases = log.filter((l) => l.msg === 'transmission phase');
    expect(phases.length).toBe(options.length);
    expect(phases.every((p) => p.structured === false)).toBe(true);
    // Commands: READ/WRITE/FLUSH/TRIM/DISC only, 512-aligned, the 32 MiB FUA write and the ~4 GiB TRIM.
    expect(new Set(requests.map((r) => r.cmd))).toEqual(new Set(['READ', 'WRITE', 'FLUSH', 'TRIM', 'DISC']));
    const io = requests.filter((r) => r.cmd === 'READ' || r.cmd === 'WRITE' || r.cmd === 'TRIM');
    expect(io.filter((r) => (r.offset as number) % 512 !== 0 || (r.length as number) % 512 !== 0)).toEqual([]);
    expect(requests.some((r) => r.cmd === 'WRITE' && r.length === 32 * MiB && ((r.flags as number) & 1) === 1)).toBe(true);
    expect(requests.some((r) => r.cmd === 'READ' && r.length === 32 * MiB)).toBe(true);
    expect(requests.some((r) => r.cmd === 'TRIM' && r.length === 0xfffffe00 && r.offset === GiB)).toBe(true);
    // Phase 1 flushes twice, phase 2 once (one fsync = one FLUSH on one connection).
    expect(requests.filter((r) => r.cmd === 'FLUSH').length).toBeGreaterThanOrEqual(2 + 1);
    expect(log.filter((l) => l.msg === 'client sent DISC').length).toBe(options.length);
  });

  it.skipIf(reference && format !== 'raw')('a fresh connection reads back every region exactly', async () => {
    expect(written.length).toBeGreaterThan(100);
    const out = (await py(VERIFY, { URI: target!.uri, REGIONS: written })) as { checked: number; bad: number[] };
    expect(out.checked).toBe(written.length);
    expect(out.bad).toEqual([]);
  });

  it.skipIf(reference && format !== 'raw')('everything flushed survives kill -9: a restarted server serves the same data', async () => {
    expect(written.length).toBeGreaterThan(100);
    await target!.stop('SIGKILL');
    target = await serve();
    const out = (await py(VERIFY, { URI: target.uri, REGIONS: written })) as { checked: number; bad: number[] };
    expect(out.checked).toBe(written.length);
    expect(out.bad, 'regions whose flushed data was lost after kill -9').toEqual([]);
  });

  it.skipIf(reference && format !== 'raw')('on disk: data where it belongs, still sparse, base image untouched', async () => {
    await target!.stop();
    target = undefined;
    if (format === 'raw') {
      const bad = written.filter((r) => fileRegionSha(disk.image, r) !== r.sha256).map((r) => r.offset);
      expect(bad).toEqual([]);
    } else {
      // Overlays: nothing ever writes to the base image.
      const st = statSync(disk.base);
      expect({ mtimeMs: st.mtimeMs, blocks: st.blocks, head: fileRegionSha(disk.base, { offset: 0, length: 4096, sha256: '' }) }).toEqual(
        baseBefore,
      );
      expect(st.size).toBe(SIZE);
    }
    // ~150 MiB were written; the 4 GiB TRIM must not have allocated (zero-filled) the range.
    const allocated = statSync(disk.image).blocks * 512 + (disk.data !== disk.image ? statSync(disk.data).blocks * 512 : 0);
    expect(allocated).toBeLessThan(1 * GiB);
  });
});
