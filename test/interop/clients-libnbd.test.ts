/**
 * Interop: libnbd's copier and fio's libnbd engine against cownbd.
 *
 * nbdcopy writing to NBD uses up to 4 connections when CAN_MULTI_CONN is advertised,
 * 256 KiB WRITEs, and one huge WRITE_ZEROES (tens of MiB, above the 32 MiB max payload)
 * for a trailing hole; reading from NBD it asks BLOCK_STATUS for the whole disk and reads
 * only data extents. fio keeps 32 requests in flight and checks every block it wrote with
 * crc32c, which catches reordering and cross-request corruption that a sequential client
 * would never provoke.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { statSync } from 'node:fs';
import { createPatternedImage, createRawImage, makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';
import { nbdPython, requireNbdPython } from '../helpers/server.js';
import { describeResult, fioNbd, makeOverlay, mustSucceed, nbdcopy, serveImage, serverLog, TARGET, type Target } from '../helpers/clients.js';

const MiB = 1024 * 1024;

describe.runIf(requireTool('nbdcopy'))('nbdcopy', () => {
  let tmp: TempDir;
  let target: Target | undefined;
  beforeAll(() => {
    tmp = makeTempDir();
  });
  afterEach(async () => {
    await target?.stop();
    target = undefined;
  });
  afterAll(() => tmp?.cleanup());

  it('round trip raw → nbd → raw preserves every byte', async () => {
    const SIZE = 24 * MiB + 4096; // not a multiple of the 256 KiB request size
    const source = createPatternedImage(tmp.file('full.raw'), SIZE, 31);
    const served = createRawImage(tmp.file('served.raw'), SIZE);
    target = await serveImage(served, { name: 'rt' });
    mustSucceed(await nbdcopy(['--flush', source, target.uri]));
    const back = tmp.file('back.raw');
    mustSucceed(await nbdcopy([target.uri, back]));
    expect(sha256File(back)).toBe(sha256File(source));
    await target.stop();
    target = undefined;
    expect(sha256File(served)).toBe(sha256File(source));
  });

  it('a sparse source over a non-zero export: holes (incl. a 56 MiB trailing one) read back as zeros', async () => {
    const SIZE = 64 * MiB;
    // Data only in the first 8 MiB (with a gap); the trailing 56 MiB hole goes out as one big
    // WRITE_ZEROES. The export starts non-zero everywhere, so a skipped or truncated zeroing
    // request shows up as a hash mismatch.
    const source = createRawImage(tmp.file('sparse.raw'), SIZE, [
      [0, 3 * MiB],
      [5 * MiB, 3 * MiB],
    ], 41);
    const served = createPatternedImage(tmp.file('dirty.raw'), SIZE, 42);
    target = await serveImage(served, { name: 'sparse', extraArgs: ['--log-level', 'trace'] });
    const r = await nbdcopy(['--flush', source, target.uri]);
    expect(r.code, describeResult(r)).toBe(0);
    if (target.kind === 'cownbd') {
      // The trailing 56 MiB hole went out as ONE WRITE_ZEROES (bigger than the 32 MiB max payload).
      const zeroes = serverLog(target).filter((l) => l.msg === 'request' && l.cmd === 'WRITE_ZEROES');
      expect(zeroes.some((z) => z.offset === 8 * MiB && z.length === 56 * MiB), JSON.stringify(zeroes)).toBe(true);
    }
    const back = tmp.file('sparse-back.raw');
    mustSucceed(await nbdcopy([target.uri, back]));
    expect(sha256File(back)).toBe(sha256File(source));
    // Reading from NBD, nbdcopy skipped the zero extents the server reported: the copy is sparse.
    expect(statSync(back).blocks * 512).toBeLessThanOrEqual(8 * MiB + 64 * 1024);
    await target.stop();
    target = undefined;
    expect(sha256File(served)).toBe(sha256File(source));
  });
});

describe.runIf(requireTool('fio'))('fio --ioengine=nbd', () => {
  let tmp: TempDir;
  let target: Target;
  beforeAll(async () => {
    tmp = makeTempDir();
    target = await serveImage(createRawImage(tmp.file('fio.raw'), 64 * MiB), { name: 'fio' });
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  /** fio: 64 MiB of random writes, every block read back and checked with crc32c. */
  const verifiedRandomWrites = (name: string, job: Record<string, string | number>) =>
    fioNbd(target.uri, { name, rw: 'randwrite', ...job, size: '64M', verify: 'crc32c', do_verify: 1, verify_fatal: 1, runtime: 20 }, { timeoutMs: 60_000 });

  /** No verification failure, and all 64 MiB written and read back. */
  function expectAllVerified(r: Awaited<ReturnType<typeof fioNbd>>): void {
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.stdout + r.stderr).not.toMatch(/verify: bad|crc32c: verify failed|bad magic/i);
    expect(r.jobs[0]!.error).toBe(0);
    expect(r.jobs[0]!.writeBytes).toBe(64 * MiB);
    expect(r.jobs[0]!.readBytes).toBeGreaterThanOrEqual(64 * MiB);
  }

  it('random writes of mixed sizes (4 KiB to 2 MiB) verify with crc32c', async () => {
    // Large payloads are read straight into their buffers, in pieces, between small
    // requests that share the read buffer (server/shared-reads.ts): every byte must land.
    expectAllVerified(await verifiedRandomWrites('verifymixed', { bsrange: '4k-2m', bs_unaligned: 0, iodepth: 16 }));
  });

  it('random 4 KiB writes at iodepth 32 verify with crc32c', async () => {
    const r = await verifiedRandomWrites('verify4k', { bs: '4k', iodepth: 32, verify_backlog: 1024 });
    expect(r.jobs).toHaveLength(1);
    // Every written block is read back and checked (backlog verifies + the final pass).
    expectAllVerified(r);
  });

  it('mixed block sizes (512 B – 256 KiB), sequential and random, verify with crc32c', async () => {
    const r = await fioNbd(
      target.uri,
      {
        name: 'verifymix',
        rw: 'randrw',
        rwmixread: 30,
        bsrange: '512-256k',
        iodepth: 32,
        size: '32M',
        offset: '16M',
        verify: 'crc32c',
        do_verify: 1,
        verify_fatal: 1,
        runtime: 20,
      },
      { timeoutMs: 60_000 },
    );
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.jobs[0]?.error).toBe(0);
    expect(r.jobs[0]!.writeBytes).toBeGreaterThan(0);
  });
});

/**
 * The same clients on overlays: many connections (nbdcopy uses 4 when CAN_MULTI_CONN is
 * set) and 32 requests in flight (fio) race on the overlay's allocation metadata, and
 * unaligned fio blocks force read-modify-write against the base.
 */
describe.runIf(requireTool('fio') && requireTool('nbdcopy') && requireTool('uml_mkcow') && TARGET === 'cownbd').each(['cow', 'add-cow'] as const)(
  'libnbd clients on a %s overlay',
  (format) => {
    let tmp: TempDir;
    let target: Target | undefined;
    let base: string;
    let baseSha: string;
    const SIZE = 64 * MiB;
    beforeAll(async () => {
      tmp = makeTempDir();
      base = createRawImage(tmp.file('base.raw'), SIZE, [
        [0, 16 * MiB],
        [40 * MiB, 8 * MiB],
      ], 71);
      baseSha = sha256File(base);
      target = await serveImage(makeOverlay(format, base, tmp.path).image, { name: format });
    });
    afterAll(async () => {
      await target?.stop();
      tmp?.cleanup();
    });

    it('fio: unaligned block sizes at iodepth 32 verify with crc32c', async () => {
      const r = await fioNbd(
        target!.uri,
        {
          name: `verify-${format}`,
          rw: 'randwrite',
          bsrange: '512-128k',
          blockalign: 512,
          iodepth: 32,
          size: '24M',
          offset: '8M', // half over base data, half over the base hole
          verify: 'crc32c',
          do_verify: 1,
          verify_fatal: 1,
          runtime: 20,
        },
        { timeoutMs: 60_000 },
      );
      expect(r.code, describeResult(r)).toBe(0);
      expect(r.stdout + r.stderr).not.toMatch(/verify: bad|verify failed|bad magic/i);
      expect(r.jobs[0]?.error).toBe(0);
      expect(r.jobs[0]!.writeBytes).toBeGreaterThan(0);
    });

    it('nbdcopy over 4 connections: copy in, copy out, same bytes; base untouched', async () => {
      const source = createRawImage(tmp.file('src.raw'), SIZE, [
        [MiB, 5 * MiB],
        [30 * MiB, 12 * MiB],
      ], 72);
      mustSucceed(await nbdcopy(['--flush', '--connections=4', source, target!.uri]));
      const back = tmp.file('back.raw');
      mustSucceed(await nbdcopy(['--connections=4', target!.uri, back]));
      expect(sha256File(back)).toBe(sha256File(source));
      await target!.stop();
      target = undefined;
      expect(sha256File(base)).toBe(baseSha);
    });
  },
);

/**
 * libnbd's own API (what nbdsh scripts and nbdfuse use) for the optional commands the
 * server advertises: CACHE, READ with DF, WRITE_ZEROES with NO_HOLE / FAST_ZERO, and
 * BLOCK_STATUS with REQ_ONE (what qemu always sends). Strict mode stays ON, so libnbd
 * itself refuses anything the server did not advertise: a missing flag fails the test.
 */
describe.runIf(requireNbdPython()).each(['raw', 'cow', 'add-cow'] as const)('libnbd optional commands on %s', (format) => {
  let tmp: TempDir;
  let target: Target | undefined;
  beforeAll(async () => {
    tmp = makeTempDir();
    const base = createRawImage(tmp.file('base.raw'), 16 * MiB, [[0, 4 * MiB]], 81);
    const image = format === 'raw' ? base : makeOverlay(format, base, tmp.path).image;
    if (format === 'raw' || TARGET === 'cownbd') target = await serveImage(image);
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it.runIf(format === 'raw' || TARGET === 'cownbd')('CACHE, DF reads, zeroing flags and REQ_ONE block status behave', async () => {
    const out = await nbdPython(
      String.raw`
import nbd, json, errno
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(URI)
res = {}
h.cache(2 * 2**20, 0)
res["cache"] = True
# DF: one unfragmented 64 KiB chunk, same bytes as a normal read.
chunks = []
def chunk(subbuf, offset, status, err):
    chunks.append((offset, status, bytes(subbuf)))
    return 0
buf = h.pread_structured(65536, 4096, chunk, nbd.CMD_FLAG_DF)
res["df_chunks"] = len(chunks)
res["df_equal"] = bytes(buf) == h.pread(65536, 4096) and chunks[0][0] == 4096 and len(chunks[0][2]) == 65536
# NO_HOLE zeroing over data (4 MiB of base/raw data at [0, 4M)).
h.zero(300000, 1000, nbd.CMD_FLAG_NO_HOLE)
res["nohole_zero"] = h.pread(300000, 1000) == bytes(300000)
res["nohole_neighbours"] = h.pread(1000, 0) != bytes(1000) and h.pread(1000, 301000) != bytes(1000)
# FAST_ZERO: either done (reads zero) or refused with ENOTSUP leaving data alone.
h.pwrite(b"\xff" * 2**20, 8 * 2**20)
try:
    h.zero(2**20, 8 * 2**20, nbd.CMD_FLAG_FAST_ZERO)
    res["fast_zero"] = "done" if h.pread(2**20, 8 * 2**20) == bytes(2**20) else "done-but-not-zero"
except nbd.Error as e:
    res["fast_zero"] = "ENOTSUP-intact" if e.errnum == errno.ENOTSUP and h.pread(2**20, 8 * 2**20) == b"\xff" * 2**20 else "error %d" % e.errnum
# REQ_ONE block status: exactly one extent, not longer than asked.
def one(off, count):
    got = []
    def cb(ctx, offset, entries, err):
        if ctx == "base:allocation":
            got.append(list(entries))
        return 0
    h.block_status(count, off, cb, nbd.CMD_FLAG_REQ_ONE)
    assert len(got) == 1, got
    return got[0]
res["bs_data"] = one(2 * 2**20, 4 * 2**20)     # data region [0,4M): asks 2M..6M
res["bs_hole"] = one(12 * 2**20, 2**20)        # untouched hole
res["bs_written"] = one(8 * 2**20, 2**20)      # written above (maybe zeroed again)
h.flush()
h.shutdown()
print(json.dumps(res))
`,
      { URI: target!.uri },
    );
    const res = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(res).toMatchObject({ cache: true, df_chunks: 1, df_equal: true, nohole_zero: true, nohole_neighbours: true });
    expect(['done', 'ENOTSUP-intact']).toContain(res.fast_zero);
    const [dataLen, dataFlags, ...restData] = res.bs_data as number[];
    expect(restData).toEqual([]);
    expect(dataLen).toBeGreaterThan(0);
    expect(dataLen).toBeLessThanOrEqual(4 * MiB); // REQ_ONE: never longer than asked
    expect(dataFlags).toBe(0);
    const [holeLen, holeFlags, ...restHole] = res.bs_hole as number[];
    expect(restHole).toEqual([]);
    expect(holeLen).toBeGreaterThan(0);
    expect(holeLen).toBeLessThanOrEqual(MiB);
    expect(holeFlags & 2, 'an untouched hole reads as zeros').toBe(2);
    const [wLen, wFlags] = res.bs_written as number[];
    expect(wLen).toBeGreaterThan(0);
    // After FAST_ZERO succeeded the range may be reported as zero; after ENOTSUP it holds 0xff data.
    if (res.fast_zero === 'ENOTSUP-intact') expect(wFlags & 2).toBe(0);
  });
});
