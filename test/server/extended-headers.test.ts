/**
 * NBD extended headers (issue 27, docs/protocol.md#extended-headers) against the real server over
 * real sockets: option rules, every command with 32-byte requests and extended reply chunks, and
 * malformed extended requests closing only their own connection. Debian 12's clients do not speak
 * extended headers, so this uses the raw client (test/helpers/nbd-extended.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, pattern } from '../helpers/images.js';
import { startServer, type RunningServer } from '../helpers/server.js';
import { CMD, ERR, OPT, REP, RawClient, infoData, metaData, optionRequest, request } from '../helpers/nbd-fixtures.js';
import { EXT, assembleRead, errorMessage, extRequest, extendedHandshake, readExtChunk, readExtReply, replyError } from '../helpers/nbd-extended.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

describe('extended headers', () => {
  const tmp = makeTempDir('cownbd-ext-');
  let srv: RunningServer;

  beforeAll(async () => {
    const disk = createRawImage(tmp.file('disk.raw'), SIZE, [[0, MiB]], 3);
    srv = await startServer(['--export', `disk=${disk}`]);
  });
  afterAll(async () => {
    expect(await srv?.stop()).toBe(0);
    tmp.cleanup();
  });

  async function connect(): Promise<RawClient> {
    return RawClient.connect({ port: srv.port! });
  }

  describe('negotiation', () => {
    it('EXTENDED_HEADERS: data → ERR_INVALID; ACK; again → ERR_INVALID; STRUCTURED_REPLY after it → ERR_EXT_HEADER_REQD', async () => {
      const c = await connect();
      try {
        await c.greet();
        c.write(optionRequest(EXT.OPT_EXTENDED_HEADERS, Buffer.from('x')));
        const bad = await c.readOptionReply();
        expect(bad.type).toBe(REP.ERR_INVALID);
        expect(bad.data.toString()).toMatch(/EXTENDED_HEADERS must have no data \(got 1 bytes\)/);
        c.write(optionRequest(EXT.OPT_EXTENDED_HEADERS));
        expect((await c.readOptionReply()).type).toBe(REP.ACK);
        c.write(optionRequest(EXT.OPT_EXTENDED_HEADERS));
        expect((await c.readOptionReply()).type).toBe(REP.ERR_INVALID);
        c.write(optionRequest(OPT.STRUCTURED_REPLY));
        expect((await c.readOptionReply()).type).toBe(EXT.ERR_EXT_HEADER_REQD);
        // Still in extended mode: GO succeeds and DF is offered (structured semantics included);
        // no contexts were selected, so BLOCK_STATUS_PAYLOAD is not.
        c.write(optionRequest(OPT.GO, infoData('disk')));
        const replies = await c.readOptionReplies();
        expect(replies[replies.length - 1]!.type).toBe(REP.ACK);
        const flags = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!.data.readUInt16BE(10);
        expect(flags & EXT.FLAG_SEND_DF).toBe(EXT.FLAG_SEND_DF);
        expect(flags & EXT.FLAG_BLOCK_STATUS_PAYLOAD).toBe(0);
        c.write(extRequest(CMD.FLUSH, { cookie: 9n }));
        const done = await readExtChunk(c);
        expect(done).toMatchObject({ flags: 1, type: EXT.TYPE_NONE, cookie: 9n, offset: 0n });
      } finally {
        c.close();
      }
    });

    it('STRUCTURED_REPLY then SET_META_CONTEXT then EXTENDED_HEADERS: the contexts stay selected', async () => {
      const c = await connect();
      try {
        await c.greet();
        c.write(optionRequest(OPT.STRUCTURED_REPLY));
        expect((await c.readOptionReply()).type).toBe(REP.ACK);
        c.write(optionRequest(OPT.SET_META, metaData('disk', ['base:allocation'])));
        const set = await c.readOptionReplies();
        expect(set.map((r) => r.type)).toEqual([REP.META_CONTEXT, REP.ACK]);
        c.write(optionRequest(EXT.OPT_EXTENDED_HEADERS));
        expect((await c.readOptionReply()).type).toBe(REP.ACK);
        c.write(optionRequest(OPT.INFO, infoData('disk')));
        const info = await c.readOptionReplies();
        c.write(optionRequest(OPT.GO, infoData('disk')));
        const go = await c.readOptionReplies();
        const flagsOf = (rs: typeof go) => rs.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!.data.readUInt16BE(10);
        expect(flagsOf(go) & EXT.FLAG_BLOCK_STATUS_PAYLOAD).toBe(EXT.FLAG_BLOCK_STATUS_PAYLOAD);
        expect(flagsOf(info)).toBe(flagsOf(go)); // INFO and GO agree
        c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 3n, offset: 0, length: 2 * MiB }));
        const chunks = await readExtReply(c);
        expect(chunks.map((ch) => ch.type)).toEqual([EXT.TYPE_BLOCK_STATUS_EXT]);
      } finally {
        c.close();
      }
    });

    it('EXPORT_NAME after EXTENDED_HEADERS closes the connection (it has no error reply)', async () => {
      const c = await connect();
      try {
        await c.greet();
        c.write(optionRequest(EXT.OPT_EXTENDED_HEADERS));
        expect((await c.readOptionReply()).type).toBe(REP.ACK);
        c.write(optionRequest(OPT.EXPORT_NAME, Buffer.from('disk')));
        expect(await c.closedByServer()).toBe(true);
        expect(srv.stderr()).toMatch(/EXPORT_NAME after EXTENDED_HEADERS/);
      } finally {
        c.close();
      }
    });

    it('a client that does not ask keeps compact requests and simple replies', async () => {
      const c = await connect();
      try {
        await c.handshake({ name: 'disk', structured: true });
        c.write(request(CMD.WRITE, { cookie: 5n, offset: 4 * MiB, payload: Buffer.alloc(512, 1) }));
        expect(await c.readSimpleReply()).toMatchObject({ error: 0, cookie: 5n });
        c.write(request(CMD.READ, { cookie: 6n, offset: 4 * MiB, length: 512 }));
        const chunk = await c.readChunk(); // 20-byte structured header, as before
        expect(chunk.cookie).toBe(6n);
        expect(chunk.payload.subarray(8)).toEqual(Buffer.alloc(512, 1));
      } finally {
        c.close();
      }
    });
  });

  describe('transmission with 32-byte headers', () => {
    it('WRITE with PAYLOAD_LEN, READ, FLUSH, TRIM, WRITE_ZEROES, CACHE: extended chunks echo cookie and offset', async () => {
      const c = await connect();
      try {
        const { size, flags } = await extendedHandshake(c, { name: 'disk' });
        expect(size).toBe(BigInt(SIZE));
        expect(flags & EXT.FLAG_BLOCK_STATUS_PAYLOAD).toBe(0);
        const data = pattern(2 * MiB + 512, 64 * 1024, 21);
        c.write(extRequest(CMD.WRITE, { flags: EXT.CMD_FLAG_PAYLOAD_LEN | 1, cookie: 0x0102030405060708n, offset: 2 * MiB + 512, payload: data }));
        const w = await readExtReply(c);
        expect(w).toEqual([{ flags: 1, type: EXT.TYPE_NONE, cookie: 0x0102030405060708n, offset: BigInt(2 * MiB + 512), payload: Buffer.alloc(0) }]);

        c.write(extRequest(CMD.READ, { cookie: 2n, offset: 2 * MiB, length: 256 * 1024 }));
        const r = await readExtReply(c);
        for (const ch of r) expect(ch).toMatchObject({ cookie: 2n, offset: BigInt(2 * MiB) });
        // Sparse READ: holes around the written range come back as OFFSET_HOLE chunks.
        expect(r.some((ch) => ch.type === EXT.TYPE_OFFSET_HOLE)).toBe(true);
        const expected = Buffer.alloc(256 * 1024);
        data.copy(expected, 512);
        // Buffer.equals: a deep toEqual of 256 KiB takes seconds on a loaded machine.
        expect(assembleRead(r, 2 * MiB, 256 * 1024).equals(expected)).toBe(true);

        c.write(extRequest(CMD.FLUSH, { cookie: 3n }));
        expect((await readExtReply(c))[0]).toMatchObject({ type: EXT.TYPE_NONE, cookie: 3n });
        c.write(extRequest(CMD.TRIM, { cookie: 4n, offset: 2 * MiB, length: 64 * 1024 }));
        expect(replyError(await readExtReply(c))).toBe(0);
        c.write(extRequest(CMD.WRITE_ZEROES, { cookie: 5n, offset: 2 * MiB + 64 * 1024, length: 64 * 1024, flags: EXT.CMD_FLAG_NO_HOLE }));
        expect(replyError(await readExtReply(c))).toBe(0);
        c.write(extRequest(CMD.CACHE, { cookie: 6n, offset: 0, length: MiB }));
        expect(replyError(await readExtReply(c))).toBe(0);
        c.write(extRequest(CMD.READ, { cookie: 7n, offset: 2 * MiB, length: 256 * 1024, flags: 4 /* DF */ }));
        const df = await readExtReply(c);
        expect(df.map((ch) => ch.type)).toEqual([EXT.TYPE_OFFSET_DATA]);
        expect(df[0]!.payload.subarray(8).equals(Buffer.alloc(256 * 1024))).toBe(true);
        c.write(extRequest(CMD.READ, { cookie: 8n, offset: 0, length: 4096 }));
        expect(assembleRead(await readExtReply(c), 0, 4096)).toEqual(pattern(0, 4096, 3));
      } finally {
        c.close();
      }
    });

    it('request errors are extended ERROR chunks that echo the offset, and the connection stays up', async () => {
      const c = await connect();
      try {
        await extendedHandshake(c, { name: 'disk' });
        c.write(extRequest(CMD.READ, { cookie: 1n, offset: SIZE - 512, length: 1024 }));
        const [past] = await readExtReply(c);
        expect(past).toMatchObject({ type: EXT.TYPE_ERROR, cookie: 1n, offset: BigInt(SIZE - 512) });
        expect(past!.payload.readUInt32BE(0)).toBe(ERR.EINVAL);
        expect(errorMessage(past!)).toMatch(/past the end/);
        // A READ longer than the 32 MiB maximum payload stays refused with extended headers.
        c.write(extRequest(CMD.READ, { cookie: 2n, offset: 0, length: 33 * MiB }));
        expect(replyError(await readExtReply(c))).toBe(ERR.EINVAL);
        // An offset above 2^53 is echoed exactly (no rounding through a double).
        c.write(extRequest(CMD.TRIM, { cookie: 3n, offset: 0xfffffffffffffff1n, length: 1 }));
        const [far] = await readExtReply(c);
        expect(far).toMatchObject({ cookie: 3n, offset: 0xfffffffffffffff1n });
        expect(far!.payload.readUInt32BE(0)).toBe(ERR.EINVAL);
        // PAYLOAD_LEN on a command without a payload form: the payload is read and EINVAL answered.
        c.write(extRequest(CMD.READ, { cookie: 4n, flags: EXT.CMD_FLAG_PAYLOAD_LEN, payload: request(CMD.DISC) }));
        const [flagged] = await readExtReply(c);
        expect(flagged!.payload.readUInt32BE(0)).toBe(ERR.EINVAL);
        expect(errorMessage(flagged!)).toMatch(/invalid flags 0x20/);
        c.write(extRequest(CMD.READ, { cookie: 5n, offset: 0, length: 8 }));
        expect(assembleRead(await readExtReply(c), 0, 8)).toEqual(pattern(0, 8, 3));
      } finally {
        c.close();
      }
    });
  });

  it('a WRITE without PAYLOAD_LEN still carries its data (QEMU 10 sends it so; QEMU\'s server accepts it)', async () => {
    const c = await connect();
    try {
      await extendedHandshake(c, { name: 'disk' });
      c.write(extRequest(CMD.WRITE, { cookie: 1n, offset: 5 * MiB, payload: Buffer.alloc(4096, 0x77) }));
      expect(replyError(await readExtReply(c))).toBe(0);
      c.write(extRequest(CMD.READ, { cookie: 2n, offset: 5 * MiB, length: 4096 }));
      expect(assembleRead(await readExtReply(c), 5 * MiB, 4096)).toEqual(Buffer.alloc(4096, 0x77));
    } finally {
      c.close();
    }
  });

  describe('malformed extended requests close only that connection', () => {
    it.each([
      // (two of them: the server reads 32 bytes before it judges a header)
      ['compact (28-byte) requests', () => Buffer.concat([request(CMD.READ, { length: 512 }), request(CMD.FLUSH)]), /bad extended request magic 0x25609513/],
      ['a PAYLOAD_LEN above the 32 MiB maximum payload', () => extRequest(CMD.WRITE, { flags: EXT.CMD_FLAG_PAYLOAD_LEN, length: 32 * MiB + 1 }), /payload of 33554433 bytes exceeds the maximum payload/],
    ])('%s', async (_name, bytes, logged) => {
      const bystander = await connect();
      const c = await connect();
      try {
        await extendedHandshake(bystander, { name: 'disk' });
        await extendedHandshake(c, { name: 'disk' });
        c.write(bytes());
        expect(await c.closedByServer()).toBe(true);
        expect(srv.stderr()).toMatch(logged);
        bystander.write(extRequest(CMD.READ, { cookie: 77n, offset: 0, length: 16 }));
        expect(assembleRead(await readExtReply(bystander), 0, 16)).toEqual(pattern(0, 16, 3));
      } finally {
        c.close();
        bystander.close();
      }
    });
  });
});
