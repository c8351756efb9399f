import { afterAll, describe, expect, it } from 'vitest';
import {
  InvalidOptionError,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
} from '../../src/protocol/handshake-codec.js';
import { ProtocolError } from '../../src/protocol/nbd-errors.js';
import { ByteReader } from '../../src/protocol/byte-reader.js';
import { negotiate } from '../../src/server/handshake.js';
import { StaticExportProvider } from '../../src/server/exports.js';
import { silentLogger } from '../../src/logging.js';
import { MAGIC, OPT, REP, infoData, metaData, optionRequest, u16, u32, u64 } from '../helpers/nbd-fixtures.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('handshake codec (exact bytes)', () => {
  it('greeting: NBDMAGIC IHAVEOPT flags', () => {
    expect(encodeGreeting(3).toString('hex')).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
  });

  it('option reply header', () => {
    expect(encodeOptionReply(7, 1).toString('hex')).toBe('0003e889045565a9' + '00000007' + '00000001' + '00000000');
    expect(encodeOptionReply(3, 0x80000001, Buffer.from('x')).toString('hex')).toBe(
      '0003e889045565a9' + '00000003' + '80000001' + '00000001' + '78',
    );
  });

  it('info payloads', () => {
    expect(encodeInfoExport(0x100000000, 0x0ded).toString('hex')).toBe('0000' + '0000000100000000' + '0ded');
    expect(encodeInfoBlockSize(1, 4096, 32 << 20).toString('hex')).toBe('0003' + '00000001' + '00001000' + '02000000');
  });

  it('EXPORT_NAME reply with and without the 124 zero bytes', () => {
    expect(encodeExportNameReply(1024, 0x43, true).toString('hex')).toBe('0000000000000400' + '0043');
    const padded = encodeExportNameReply(1024, 0x43, false);
    expect(padded.length).toBe(134);
    expect(padded.subarray(10).every((b) => b === 0)).toBe(true);
  });

  it('server entry and meta context', () => {
    expect(encodeServerEntry('ab', 'd').toString('hex')).toBe('00000002' + '6162' + '64');
    expect(encodeMetaContext(1, 'base:allocation')).toEqual(Buffer.concat([u32(1), Buffer.from('base:allocation')]));
  });

  it('decodes option headers and rejects a bad magic', () => {
    expect(decodeOptionHeader(optionRequest(OPT.GO, Buffer.alloc(9)))).toEqual({ option: 7, length: 9 });
    expect(() => decodeOptionHeader(hex('494841564f4f5054 00000007 00000000'))).toThrow(ProtocolError);
  });

  it('decodes INFO/GO data', () => {
    expect(decodeInfoRequest(infoData('disk', [1, 3]))).toEqual({ name: 'disk', infos: [1, 3] });
    expect(decodeInfoRequest(infoData(''))).toEqual({ name: '', infos: [] });
  });

  it.each([
    ['too short', hex('00000000 00')],
    ['name longer than the data', hex('00000010 6162 0000')],
    ['info count does not match the length', hex('00000000 0002 0001')],
    ['trailing bytes', hex('00000000 0000 ff')],
  ])('INFO/GO data %s → InvalidOptionError', (_n, data) => {
    expect(() => decodeInfoRequest(data)).toThrow(InvalidOptionError);
  });

  it('rejects names over 4096 bytes as a protocol error (close)', () => {
    const long = 'x'.repeat(4097);
    expect(() => decodeInfoRequest(infoData(long))).toThrow(ProtocolError);
  });

  it('decodes meta context requests and rejects truncated ones', () => {
    expect(decodeMetaContextRequest(metaData('d', ['base:allocation', 'qemu:']))).toEqual({
      name: 'd',
      queries: ['base:allocation', 'qemu:'],
    });
    const bad = metaData('d', ['base:allocation']);
    expect(() => decodeMetaContextRequest(bad.subarray(0, bad.length - 1))).toThrow(InvalidOptionError);
    expect(() => decodeMetaContextRequest(Buffer.concat([bad, Buffer.from([0])]))).toThrow(InvalidOptionError);
  });
});

describe('negotiate() over a byte stream split at every offset', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const image = createRawImage(tmp.file('disk.raw'), 1 << 20);

  const clientBytes = Buffer.concat([
    u32(3),
    optionRequest(OPT.STRUCTURED_REPLY),
    optionRequest(99, Buffer.from('xyz')),
    optionRequest(OPT.LIST, Buffer.from('zz')),
    optionRequest(OPT.INFO, infoData('disk', [1, 3, 2, 77])),
    optionRequest(OPT.SET_META, metaData('disk', ['base:allocation', 'x-foo:bar', 'qemu:allocation-depth'])),
    optionRequest(OPT.GO, infoData('disk')),
  ]);

  // Expected server output, built by hand from the spec.
  const rep = (opt: number, type: number, data = Buffer.alloc(0)) =>
    Buffer.concat([MAGIC.OPT_REPLY, u32(opt), u32(type), u32(data.length), data]);
  const exportInfo = Buffer.concat([u16(0), u64(1 << 20), u16(0x0ded)]);
  const expected = Buffer.concat([
    MAGIC.NBDMAGIC,
    MAGIC.IHAVEOPT,
    u16(3),
    rep(OPT.STRUCTURED_REPLY, REP.ACK),
    rep(99, REP.ERR_UNSUP, Buffer.from('option 99 is not supported')),
    rep(OPT.LIST, REP.ERR_INVALID, Buffer.from('LIST must have no data (got 2 bytes)')),
    rep(OPT.INFO, REP.INFO, Buffer.concat([u16(1), Buffer.from('disk')])),
    rep(OPT.INFO, REP.INFO, Buffer.concat([u16(3), u32(1), u32(4096), u32(32 << 20)])),
    rep(OPT.INFO, REP.INFO, Buffer.concat([u16(2), Buffer.from('the disk')])),
    rep(OPT.INFO, REP.INFO, exportInfo),
    rep(OPT.INFO, REP.ACK),
    rep(OPT.SET_META, REP.META_CONTEXT, Buffer.concat([u32(1), Buffer.from('base:allocation')])),
    rep(OPT.SET_META, REP.META_CONTEXT, Buffer.concat([u32(2), Buffer.from('qemu:allocation-depth')])),
    rep(OPT.SET_META, REP.ACK),
    rep(OPT.GO, REP.INFO, exportInfo),
    rep(OPT.GO, REP.ACK),
  ]);

  it('produces identical replies and session for every split point', async () => {
    const provider = new StaticExportProvider([{ name: 'disk', path: image, description: 'the disk' }], silentLogger());
    try {
      for (let cut = 0; cut <= clientBytes.length; cut++) {
        const reader = new ByteReader();
        const out: Buffer[] = [];
        const done = negotiate({
          reader,
          send: (b) => out.push(Buffer.from(b)),
          log: silentLogger(),
          provider,
          ctx: { connId: 1, peer: 'test' },
          shuttingDown: () => false,
        });
        reader.push(clientBytes.subarray(0, cut));
        await new Promise((r) => setImmediate(r));
        reader.push(clientBytes.subarray(cut));
        const session = await done;
        expect(Buffer.concat(out).toString('hex'), `split at ${cut}`).toBe(expected.toString('hex'));
        expect(session).toMatchObject({ structured: true, transmissionFlags: 0x0ded, baseAllocationId: 1, allocationDepthId: 2 });
        expect(reader.length).toBe(0);
      }
    } finally {
      await provider.close();
    }
  });

  it('drops the connection on unknown client flags', async () => {
    const provider = new StaticExportProvider([{ name: '', path: image }], silentLogger());
    const reader = new ByteReader();
    const done = negotiate({ reader, send: () => undefined, log: silentLogger(), provider, ctx: { connId: 1, peer: 't' }, shuttingDown: () => false });
    reader.push(u32(4));
    await expect(done).rejects.toMatchObject({ code: 'NBD_ERR_BAD_CLIENT_FLAGS' });
    await provider.close();
  });
});
