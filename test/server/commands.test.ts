/**
 * Black-box tests of the transmission phase through python3-libnbd: one test per
 * request rule (spec error table, flags, zero-length, DF, REQ_ONE, FAST_ZERO, RO).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { createRawImage, makeTempDir, pattern } from '../helpers/images.js';
import { nbdPython, requireNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { PRELUDE, lastJson } from './py-prelude.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const hasNbd = requireNbdPython();

describe.runIf(hasNbd)('transmission commands (libnbd)', () => {
  const tmp = makeTempDir();
  let srv: RunningServer;
  let image: string;
  let roImage: string;

  beforeAll(async () => {
    // Data at [1 MiB, 1 MiB + 64 KiB) and [8 MiB, 9 MiB); holes elsewhere.
    image = createRawImage(tmp.file('rw.raw'), SIZE, [[MiB, 64 * 1024], [8 * MiB, MiB]], 7);
    roImage = createRawImage(tmp.file('ro.raw'), SIZE, [[0, 4096]], 9);
    srv = await startServer([image, '--export', `ro=${roImage},ro`]);
  });
  afterAll(async () => {
    expect(await srv?.stop()).toBe(0);
    tmp.cleanup();
  });

  const py = async (body: string, vars: Record<string, unknown> = {}) =>
    lastJson<Record<string, any>>(await nbdPython(PRELUDE + body, { URI: srv.uri(), RO_URI: srv.uri('ro'), ...vars }));

  it('reads what is on disk and writes durably (FUA) at unaligned offsets', async () => {
    const r = await py(`
h = conn()
a = h.pread(100, ${MiB} - 50)
h.pwrite(b'X' * 1000, 12 * ${MiB} + 12345, nbd.CMD_FLAG_FUA)
b = h.pread(1000, 12 * ${MiB} + 12345)
h.shutdown()
out({"a": a.hex(), "b": b == b'X' * 1000})
`);
    expect(r.a).toBe(Buffer.concat([Buffer.alloc(50), pattern(MiB, 50, 7)]).toString('hex'));
    expect(r.b).toBe(true);
    expect(readFileSync(image).subarray(12 * MiB + 12345, 12 * MiB + 13345).equals(Buffer.alloc(1000, 'X'))).toBe(true);
  });

  it('advertises the expected capabilities after GO', async () => {
    const r = await py(`
h = conn(meta=["base:allocation"])
out({k: getattr(h, k)() for k in ["can_flush","can_fua","can_trim","can_zero","can_fast_zero","can_df","can_cache","can_multi_conn","is_read_only","get_size","get_structured_replies_negotiated"]})
`);
    expect(r).toMatchObject({
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_fast_zero: true,
      can_df: true,
      can_cache: true,
      can_multi_conn: true,
      is_read_only: false,
      get_size: SIZE,
      get_structured_replies_negotiated: true,
    });
  });

  it('replies EINVAL when READ extends past the end, and stays connected', async () => {
    const r = await py(`
h = conn(strict=False)
e = err_of(lambda: h.pread(4096, ${SIZE} - 100))
ok = h.pread(100, ${SIZE} - 100)
out({"e": e, "after": len(ok)})
`);
    expect(r).toEqual({ e: 'EINVAL', after: 100 });
  });

  it('replies ENOSPC when WRITE and WRITE_ZEROES extend past the end', async () => {
    const r = await py(`
h = conn(strict=False)
out({"w": err_of(lambda: h.pwrite(b'a' * 512, ${SIZE} - 256)),
     "z": err_of(lambda: h.zero(4096, ${SIZE})),
     "t": err_of(lambda: h.trim(4096, ${SIZE} - 1)),
     "c": err_of(lambda: h.cache(4096, ${SIZE} - 1)),
     "after": len(h.pread(1, 0))})
`);
    expect(r).toEqual({ w: 'ENOSPC', z: 'ENOSPC', t: 'EINVAL', c: 'EINVAL', after: 1 });
  });

  it('replies EINVAL when BLOCK_STATUS starts past the end', async () => {
    const r = await py(`
h = conn(meta=["base:allocation"], strict=False)
out({"e": err_of(lambda: h.block_status(4096, ${SIZE}, lambda *a: 0))})
`);
    expect(r.e).toBe('EINVAL');
  });

  it('treats zero-length requests as harmless no-ops', async () => {
    const r = await py(`
h = conn(meta=["base:allocation"], strict=False)
res = {}
res["read"] = err_of(lambda: h.pread(0, 4096))
res["write"] = err_of(lambda: h.pwrite(b'', 4096))
res["trim"] = err_of(lambda: h.trim(0, 4096))
res["zero"] = err_of(lambda: h.zero(0, 4096))
res["cache"] = err_of(lambda: h.cache(0, 4096))
res["bs"] = err_of(lambda: h.block_status(0, 4096, lambda *a: 0))
res["alive"] = len(h.pread(10, 0))
out(res)
`);
    expect(r).toEqual({ read: 0, write: 0, trim: 0, zero: 0, cache: 0, bs: 0, alive: 10 });
  });

  it('replies EINVAL to an unknown command flag and stays connected', async () => {
    const r = await py(`
h = conn(strict=False)
out({"read": err_of(lambda: h.pread(512, 0, 0x100)),
     "write": err_of(lambda: h.pwrite(b'q' * 512, 0, nbd.CMD_FLAG_DF)),
     "flush": err_of(lambda: h.flush(nbd.CMD_FLAG_NO_HOLE)),
     "alive": len(h.pread(10, 0))})
`);
    expect(r).toEqual({ read: 'EINVAL', write: 'EINVAL', flush: 'EINVAL', alive: 10 });
    // The rejected WRITE's payload was drained, not written.
    expect(readFileSync(image).subarray(0, 512).includes('q'.charCodeAt(0))).toBe(false);
  });

  it('answers a DF read with exactly one data chunk, and a sparse read with hole chunks', async () => {
    const r = await py(`
h = conn()
def reader():
    chunks = []
    def cb(subbuf, offset, status, error):
        chunks.append([offset, len(subbuf), status])
        return 0
    return chunks, cb
c1, cb1 = reader()
buf = h.pread_structured(4 * ${MiB}, 0, cb1, nbd.CMD_FLAG_DF)
c2, cb2 = reader()
buf2 = h.pread_structured(4 * ${MiB}, 0, cb2)
out({"df": c1, "sparse": c2, "same": buf == buf2})
`);
    expect(r.df).toEqual([[0, 4 * MiB, 1]]);
    expect(r.same).toBe(true);
    // hole [0,1M), data [1M,1M+64K), hole [1M+64K,4M) — in any order.
    const sparse = (r.sparse as number[][]).sort((a, b) => a[0]! - b[0]!);
    expect(sparse).toEqual([
      [0, MiB, 2],
      [MiB, 64 * 1024, 1],
      [MiB + 64 * 1024, 3 * MiB - 64 * 1024, 2],
    ]);
  });

  it('BLOCK_STATUS reports holes and data, REQ_ONE returns one extent no longer than asked', async () => {
    const r = await py(`
h = conn(meta=["base:allocation", "qemu:allocation-depth"])
full = {}
def cb(ctx, off, entries, err):
    full[ctx] = list(entries)
    return 0
h.block_status(10 * ${MiB}, 0, cb)
one = {}
def cb1(ctx, off, entries, err):
    one[ctx] = list(entries)
    return 0
h.block_status(${MiB} + 100, ${MiB} - 4096, cb1, nbd.CMD_FLAG_REQ_ONE)
out({"full": full, "one": one})
`);
    expect(r.full['base:allocation']).toEqual([MiB, 3, 64 * 1024, 0, 7 * MiB - 64 * 1024, 3, MiB, 0, MiB, 3]);
    expect(r.full['qemu:allocation-depth']).toEqual([10 * MiB, 1]);
    expect(r.one['base:allocation']).toEqual([4096, 3]);
    expect(r.one['qemu:allocation-depth']).toEqual([MiB + 100, 1]);
  });

  it('FAST_ZERO either succeeds quickly or fails ENOTSUP without touching data; plain zero works', async () => {
    const r = await py(`
h = conn()
h.pwrite(b'Z' * 8192, 13 * ${MiB})
fz = err_of(lambda: h.zero(8192, 13 * ${MiB}, nbd.CMD_FLAG_FAST_ZERO))
after_fast = h.pread(8192, 13 * ${MiB})
h.zero(8192, 13 * ${MiB}, nbd.CMD_FLAG_NO_HOLE)
out({"fz": fz, "untouched": after_fast == b'Z' * 8192, "zeroed": h.pread(8192, 13 * ${MiB}) == bytes(8192)})
`);
    expect([0, 'ENOTSUP']).toContain(r.fz);
    if (r.fz === 'ENOTSUP') expect(r.untouched).toBe(true);
    expect(r.zeroed).toBe(true);
  });

  it('accepts 32 MiB-class payload-less requests: 56 MiB WRITE_ZEROES and ~4 GiB TRIM', async () => {
    const big = createRawImage(tmp.file('big.raw'), 5 * 1024 * MiB);
    const s2 = await startServer([big]);
    try {
      const r = lastJson(
        await nbdPython(
          PRELUDE +
            `
h = conn()
h.zero(56 * ${MiB}, 0)
h.trim(4 * 1024 * ${MiB} - 512, 512)
h.flush()
out({"ok": True})
`,
          { URI: s2.uri() },
        ),
      );
      expect(r.ok).toBe(true);
    } finally {
      await s2.stop();
    }
  });

  it('refuses writes, trims and zeroes on a read-only export with EPERM', async () => {
    const r = await py(`
h = conn(RO_URI, strict=False)
out({"ro": h.is_read_only(), "w": err_of(lambda: h.pwrite(b'x', 0)), "t": err_of(lambda: h.trim(512, 0)),
     "z": err_of(lambda: h.zero(512, 0)), "read": h.pread(8, 0).hex(), "flush": err_of(lambda: h.flush())})
`);
    expect(r).toEqual({ ro: true, w: 'EPERM', t: 'EPERM', z: 'EPERM', read: pattern(0, 8, 9).toString('hex'), flush: 0 });
  });
});
