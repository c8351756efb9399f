/**
 * Black-box tests of option haggling: libnbd for what real clients do (LIST, INFO vs
 * GO, unknown export, meta contexts), the raw client for what they never do.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { OPT, REP, RawClient, infoData, metaData, optionRequest, u32 } from '../helpers/nbd-fixtures.js';
import { PRELUDE, lastJson } from './py-prelude.js';

const MiB = 1024 * 1024;
const hasNbd = requireNbdPython();

describe('option haggling', () => {
  const tmp = makeTempDir();
  let srv: RunningServer;

  beforeAll(async () => {
    const a = createRawImage(tmp.file('a.raw'), 4 * MiB, [[0, 4096]]);
    const b = createRawImage(tmp.file('b.raw'), 2 * MiB);
    srv = await startServer([a, '-n', 'alpha', '--description', 'first disk', '--export', `beta=${b},ro,description="second, with comma"`]);
  });
  afterAll(async () => {
    expect(await srv?.stop()).toBe(0);
    tmp.cleanup();
  });

  it.runIf(hasNbd)('LIST returns every export with its description', async () => {
    const r = lastJson(
      await nbdPython(
        PRELUDE +
          `
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
names = []
h.opt_list(lambda n, d: names.append([n, d]) or 0)
h.opt_abort()
out({"names": sorted(names)})
`,
        { URI: srv.uri('alpha') },
      ),
    );
    expect(r.names).toEqual([
      ['alpha', 'first disk'],
      ['beta', 'second, with comma'],
    ]);
  });

  it.runIf(hasNbd)('INFO and GO report the same size, flags, block size and description', async () => {
    const r = lastJson<Record<string, { info: unknown[]; go: unknown[] }>>(
      await nbdPython(
        PRELUDE +
          `
res = {}
for name in ["alpha", "beta"]:
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_full_info(True)
    h.connect_uri(URI_BASE + name)
    h.set_export_name(name)
    h.opt_info()
    info = [h.get_size(), h.is_read_only(), h.can_df(), h.can_multi_conn(), h.can_trim(), h.can_flush(), h.get_block_size(nbd.SIZE_PREFERRED), h.get_export_description()]
    h.opt_go()
    go = [h.get_size(), h.is_read_only(), h.can_df(), h.can_multi_conn(), h.can_trim(), h.can_flush(), h.get_block_size(nbd.SIZE_PREFERRED), h.get_export_description()]
    res[name] = {"info": info, "go": go}
    h.shutdown()
out(res)
`,
        { URI_BASE: srv.uri('').replace(/\/$/, '/') },
      ),
    );
    expect(r.alpha!.info).toEqual(r.alpha!.go);
    expect(r.alpha!.go).toEqual([4 * MiB, false, true, true, true, true, 4096, 'first disk']);
    expect(r.beta!.info).toEqual(r.beta!.go);
    expect(r.beta!.go).toEqual([2 * MiB, true, true, true, false, true, 4096, 'second, with comma']);
  });

  it.runIf(hasNbd)('an unknown export is refused with ERR_UNKNOWN and haggling can continue', async () => {
    const r = lastJson(
      await nbdPython(
        PRELUDE +
          `
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
h.set_export_name("nope")
e = err_of(lambda: h.opt_go())
h.set_export_name("alpha")
h.opt_go()
out({"e": e, "size": h.get_size()})
`,
        { URI: srv.uri('alpha') },
      ),
    );
    expect(r.e).not.toBe(0);
    expect(r.size).toBe(4 * MiB);
  });

  it.runIf(hasNbd)('LIST_META_CONTEXT offers base:allocation and qemu:allocation-depth', async () => {
    const r = lastJson(
      await nbdPython(
        PRELUDE +
          `
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
allc = []
h.opt_list_meta_context(lambda n: allc.append(n) or 0)
h.add_meta_context("qemu:")
some = []
h.opt_list_meta_context(lambda n: some.append(n) or 0)
h.opt_abort()
out({"all": sorted(allc), "qemu": some})
`,
        { URI: srv.uri('alpha') },
      ),
    );
    expect(r.all).toEqual(['base:allocation', 'qemu:allocation-depth']);
    expect(r.qemu).toEqual(['qemu:allocation-depth']);
  });

  it('greets with FIXED_NEWSTYLE|NO_ZEROES and answers EXPORT_NAME with or without the 124 zeros', async () => {
    for (const flags of [1, 3]) {
      const c = await RawClient.connect({ port: srv.port! });
      try {
        expect(await c.greet(flags)).toBe(3);
        c.write(optionRequest(OPT.EXPORT_NAME, Buffer.from('alpha')));
        const reply = await c.read(flags === 3 ? 10 : 134);
        expect(reply.readBigUInt64BE(0)).toBe(BigInt(4 * MiB));
        const tflags = reply.readUInt16BE(8);
        expect(tflags & 1).toBe(1); // HAS_FLAGS
        expect(tflags & 0x80).toBe(0); // no SEND_DF without structured replies
        if (flags === 1) expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
      } finally {
        c.close();
      }
    }
  });

  it('closes the connection on EXPORT_NAME of an unknown export', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    c.write(optionRequest(OPT.EXPORT_NAME, Buffer.from('missing')));
    expect(await c.closedByServer()).toBe(true);
  });

  it('closes the connection on unknown client flags', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet(0x10);
    expect(await c.closedByServer()).toBe(true);
  });

  it('answers STARTTLS with ERR_POLICY, unknown options with ERR_UNSUP, bad lengths with ERR_INVALID — and keeps going', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    try {
      await c.greet();
      c.write(optionRequest(OPT.STARTTLS));
      expect((await c.readOptionReply()).type).toBe(REP.ERR_POLICY);
      c.write(optionRequest(4242, Buffer.alloc(300, 7)));
      expect((await c.readOptionReply()).type).toBe(REP.ERR_UNSUP);
      c.write(optionRequest(OPT.LIST, Buffer.from('junk')));
      expect((await c.readOptionReply()).type).toBe(REP.ERR_INVALID);
      // GO whose name length points past the option data.
      c.write(optionRequest(OPT.GO, Buffer.concat([u32(100), Buffer.from('alpha'), Buffer.alloc(2)])));
      expect((await c.readOptionReply()).type).toBe(REP.ERR_INVALID);
      // SET_META_CONTEXT before STRUCTURED_REPLY.
      c.write(optionRequest(OPT.SET_META, metaData('alpha', ['base:allocation'])));
      expect((await c.readOptionReply()).type).toBe(REP.ERR_INVALID);
      c.write(optionRequest(OPT.INFO, infoData('zzz')));
      expect((await c.readOptionReply()).type).toBe(REP.ERR_UNKNOWN);
      c.write(optionRequest(OPT.ABORT));
      expect((await c.readOptionReply()).type).toBe(REP.ACK);
      expect(await c.closedByServer()).toBe(true);
    } finally {
      c.close();
    }
  });

  it('closes the connection on a bad option magic', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.greet();
    c.write(Buffer.from('IHAVEOPX\0\0\0\x03\0\0\0\0', 'latin1'));
    expect(await c.closedByServer()).toBe(true);
    expect(srv.stderr()).toMatch(/bad option magic/);
  });

  it('serves on a Unix socket and prints an nbd+unix URI', async () => {
    const img = createRawImage(tmp.file('u.raw'), MiB);
    const s = await startServer([img, '-n', 'u'], { unix: true });
    try {
      expect(s.uris[0]).toBe(`nbd+unix:///u?socket=${s.socketPath}`);
      const c = await RawClient.connect({ path: s.socketPath! });
      const { size } = await c.handshake({ name: 'u' });
      expect(size).toBe(BigInt(MiB));
      c.close();
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });
});
