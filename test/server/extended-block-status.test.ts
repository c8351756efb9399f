/**
 * Block status with extended headers (issue 27, docs/protocol.md#extended-headers): 64-bit
 * BLOCK_STATUS_EXT descriptors for base:allocation and qemu:allocation-depth on a per-machine
 * overlay, the BLOCK_STATUS_PAYLOAD filter, and requests beyond 4 GiB (TRIM, WRITE_ZEROES,
 * BLOCK_STATUS) on a large sparse image — all over real sockets with the raw extended client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, pattern } from '../helpers/images.js';
import { startServer, type RunningServer } from '../helpers/server.js';
import { CMD, ERR, RawClient } from '../helpers/nbd-fixtures.js';
import { EXT, assembleRead, decodeStatusExt, errorMessage, extRequest, extendedHandshake, readExtReply, replyError, statusPayload } from '../helpers/nbd-extended.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const BASE_SIZE = 16 * MiB;
const BIG = 12 * GiB;
const HOLE = 1n, ZERO = 2n;

describe('block status with extended headers', () => {
  const tmp = makeTempDir('cownbd-extbs-');
  let srv: RunningServer;

  beforeAll(async () => {
    // Golden base: data in [0, 4 MiB), a hole after it. Per-machine overlays over it.
    const base = createRawImage(tmp.file('base.raw'), BASE_SIZE, [[0, 4 * MiB]], 5);
    // A sparse 12 GiB raw image with data at 0 and at 10 GiB.
    const big = createRawImage(tmp.file('big.raw'), BIG, [[0, MiB], [10 * GiB, MiB]], 6);
    srv = await startServer(['--base', base, '--overlay-dir', tmp.file('overlays'), '--export', `big=${big}`]);
  });
  afterAll(async () => {
    expect(await srv?.stop()).toBe(0);
    tmp.cleanup();
  });

  async function open(name: string, meta: string[]) {
    const c = await RawClient.connect({ port: srv.port! });
    const hs = await extendedHandshake(c, { name, meta });
    return { c, ...hs };
  }

  const descriptors = (extents: Array<{ length: bigint; status: bigint }>) => extents.map((e) => [Number(e.length), Number(e.status)]);

  it('BLOCK_STATUS_EXT: one chunk per context with u64 descriptors; the payload form filters contexts', async () => {
    const { c, flags, ids } = await open('m1', ['base:allocation', 'qemu:allocation-depth']);
    try {
      expect(flags & EXT.FLAG_BLOCK_STATUS_PAYLOAD).toBe(EXT.FLAG_BLOCK_STATUS_PAYLOAD);
      const base = ids['base:allocation']!;
      const depth = ids['qemu:allocation-depth']!;
      expect(base).toBeGreaterThan(0);
      expect(depth).toBeGreaterThan(0);
      // The overlay holds [1 MiB, 1 MiB + 64 KiB) after this write.
      c.write(extRequest(CMD.WRITE, { flags: EXT.CMD_FLAG_PAYLOAD_LEN, cookie: 1n, offset: MiB, payload: pattern(MiB, 64 * 1024, 9) }));
      expect(replyError(await readExtReply(c))).toBe(0);

      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 2n, offset: 0, length: BASE_SIZE }));
      const chunks = await readExtReply(c);
      expect(chunks.map((ch) => [ch.type, ch.flags, ch.cookie, ch.offset])).toEqual([
        [EXT.TYPE_BLOCK_STATUS_EXT, 0, 2n, 0n],
        [EXT.TYPE_BLOCK_STATUS_EXT, 1, 2n, 0n],
      ]);
      const byId = Object.fromEntries(chunks.map((ch) => decodeStatusExt(ch)).map((d) => [d.id, descriptors(d.extents)]));
      expect(byId[base]).toEqual([
        [4 * MiB, 0],
        [12 * MiB, Number(HOLE | ZERO)],
      ]);
      // Depth 1 = the overlay holds it, 2 = the base (the same values compact clients get).
      expect(byId[depth]).toEqual([
        [MiB, 2],
        [64 * 1024, 1],
        [BASE_SIZE - MiB - 64 * 1024, 2],
      ]);

      // Payload form: only qemu:allocation-depth, with REQ_ONE and an effect length of 100 KiB.
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 3n, offset: MiB, flags: EXT.CMD_FLAG_PAYLOAD_LEN | EXT.CMD_FLAG_REQ_ONE, payload: statusPayload(100 * 1024, [depth]) }));
      const only = await readExtReply(c);
      expect(only).toHaveLength(1);
      expect(only[0]).toMatchObject({ flags: 1, cookie: 3n, offset: BigInt(MiB) });
      expect(decodeStatusExt(only[0]!)).toEqual({ id: depth, extents: [{ length: 64n * 1024n, status: 1n }] });

      // Both ids, in the other order: both chunks, the last one DONE.
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 4n, offset: 0, flags: EXT.CMD_FLAG_PAYLOAD_LEN, payload: statusPayload(MiB, [depth, base]) }));
      const both = await readExtReply(c);
      expect(both.map((ch) => decodeStatusExt(ch).id).sort()).toEqual([base, depth].sort());
    } finally {
      c.close();
    }
  });

  it.each([
    ['an id that was not negotiated', (ids: number[]) => statusPayload(MiB, [ids[0]! + ids[1]! + 7]), /context id \d+, which was not negotiated/],
    ['the same id twice', (ids: number[]) => statusPayload(MiB, [ids[0]!, ids[0]!]), /names context id \d+ twice/],
    ['no id at all', () => statusPayload(MiB, []), /must be 8 \+ 4 × n with at least one context id/],
    ['a length that is not 8 + 4n', (ids: number[]) => Buffer.concat([statusPayload(MiB, [ids[0]!]), Buffer.alloc(2)]), /must be 8 \+ 4 × n/],
    ['more ids than were negotiated', (ids: number[]) => statusPayload(MiB, [ids[0]!, ids[1]!, 99]), /names more contexts than the 2 negotiated/],
    ['an effect length past the end', (ids: number[]) => statusPayload(BASE_SIZE + 1, [ids[0]!]), /past the end/],
  ])('a BLOCK_STATUS payload with %s: EINVAL after its bytes are read, the connection carries on', async (_name, payload, message) => {
    const { c, ids } = await open('m2', ['base:allocation', 'qemu:allocation-depth']);
    try {
      const list = [ids['base:allocation']!, ids['qemu:allocation-depth']!];
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 5n, flags: EXT.CMD_FLAG_PAYLOAD_LEN, payload: payload(list) }));
      const [err] = await readExtReply(c);
      expect(err!.payload.readUInt32BE(0)).toBe(ERR.EINVAL);
      expect(errorMessage(err!)).toMatch(message);
      c.write(extRequest(CMD.READ, { cookie: 6n, offset: 0, length: 32 }));
      expect(assembleRead(await readExtReply(c), 0, 32)).toEqual(pattern(0, 32, 5));
    } finally {
      c.close();
    }
  });

  it('qemu:dirty-bitmap:overlay over extended headers: u64 descriptors, and the payload form answers the bitmap alone', async () => {
    const { c, flags, ids } = await open('m2', ['base:allocation', 'qemu:dirty-bitmap:overlay']);
    try {
      expect(flags & EXT.FLAG_BLOCK_STATUS_PAYLOAD).toBe(EXT.FLAG_BLOCK_STATUS_PAYLOAD);
      const bitmap = ids['qemu:dirty-bitmap:overlay']!;
      const base = ids['base:allocation']!;
      expect(bitmap).toBeGreaterThan(0);
      c.write(extRequest(CMD.WRITE, { flags: EXT.CMD_FLAG_PAYLOAD_LEN, cookie: 1n, offset: 2 * MiB, payload: pattern(2 * MiB, 128 * 1024, 4) }));
      expect(replyError(await readExtReply(c))).toBe(0);

      // Unfiltered: both contexts answer, the bitmap marks exactly the written range dirty (flag 1).
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 2n, offset: 0, length: BASE_SIZE }));
      const both = Object.fromEntries((await readExtReply(c)).map((ch) => decodeStatusExt(ch)).map((d) => [d.id, descriptors(d.extents)]));
      expect(Object.keys(both).map(Number).sort()).toEqual([base, bitmap].sort());
      expect(both[bitmap]).toEqual([
        [2 * MiB, 0],
        [128 * 1024, 1],
        [BASE_SIZE - 2 * MiB - 128 * 1024, 0],
      ]);

      // Filtered to the bitmap: one chunk, DONE, only its id.
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 3n, offset: 0, flags: EXT.CMD_FLAG_PAYLOAD_LEN, payload: statusPayload(BASE_SIZE, [bitmap]) }));
      const only = await readExtReply(c);
      expect(only).toHaveLength(1);
      expect(only[0]).toMatchObject({ flags: 1, cookie: 3n });
      expect(decodeStatusExt(only[0]!).id).toBe(bitmap);
      expect(descriptors(decodeStatusExt(only[0]!).extents)).toEqual(both[bitmap]);
    } finally {
      c.close();
    }
  });

  it('without selected contexts BLOCK_STATUS_PAYLOAD is not offered and the payload form is refused', async () => {
    const { c, flags } = await open('m3', []);
    try {
      expect(flags & EXT.FLAG_BLOCK_STATUS_PAYLOAD).toBe(0);
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 1n, flags: EXT.CMD_FLAG_PAYLOAD_LEN, payload: statusPayload(MiB, [1]) }));
      expect(replyError(await readExtReply(c))).toBe(ERR.EINVAL);
      c.write(extRequest(CMD.FLUSH, { cookie: 2n }));
      expect(replyError(await readExtReply(c))).toBe(0);
    } finally {
      c.close();
    }
  });

  it('beyond 4 GiB: BLOCK_STATUS reports a > 4 GiB extent in one descriptor; TRIM and WRITE_ZEROES of 5 GiB', async () => {
    const { c, size, ids } = await open('big', ['base:allocation']);
    try {
      expect(size).toBe(BigInt(BIG));
      const id = ids['base:allocation']!;
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 1n, offset: 0, length: BigInt(BIG) }));
      const [chunk] = await readExtReply(c);
      expect(decodeStatusExt(chunk!)).toEqual({
        id,
        extents: [
          { length: BigInt(MiB), status: 0n },
          { length: BigInt(10 * GiB - MiB), status: HOLE | ZERO }, // > 2^32: only expressible with BLOCK_STATUS_EXT
          { length: BigInt(MiB), status: 0n },
          { length: BigInt(2 * GiB - MiB), status: HOLE | ZERO },
        ],
      });
      // REQ_ONE with a 6 GiB effect length: one descriptor, no longer than the request.
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 2n, offset: MiB, length: BigInt(6 * GiB), flags: EXT.CMD_FLAG_REQ_ONE }));
      expect(decodeStatusExt((await readExtReply(c))[0]!).extents).toEqual([{ length: BigInt(6 * GiB), status: HOLE | ZERO }]);

      // WRITE_ZEROES over [0, 5 GiB) and TRIM over [6 GiB, 11 GiB): single requests above 2^32.
      c.write(extRequest(CMD.WRITE_ZEROES, { cookie: 3n, offset: 0, length: BigInt(5 * GiB) }));
      const z = await readExtReply(c);
      expect(z).toEqual([{ flags: 1, type: EXT.TYPE_NONE, cookie: 3n, offset: 0n, payload: Buffer.alloc(0) }]);
      c.write(extRequest(CMD.TRIM, { cookie: 4n, offset: BigInt(6 * GiB), length: BigInt(5 * GiB) }));
      expect(replyError(await readExtReply(c))).toBe(0);
      for (const at of [0, 10 * GiB]) {
        c.write(extRequest(CMD.READ, { cookie: 5n, offset: at, length: 4096, flags: 4 }));
        expect(assembleRead(await readExtReply(c), at, 4096)).toEqual(Buffer.alloc(4096));
      }
      // Past the end with a u64 length: EINVAL (TRIM) and ENOSPC (WRITE_ZEROES), connection up.
      c.write(extRequest(CMD.TRIM, { cookie: 6n, offset: BigInt(8 * GiB), length: BigInt(5 * GiB) }));
      expect(replyError(await readExtReply(c))).toBe(ERR.EINVAL);
      c.write(extRequest(CMD.WRITE_ZEROES, { cookie: 7n, offset: 0, length: 0xffffffffffffffffn }));
      expect(replyError(await readExtReply(c))).toBe(ERR.ENOSPC);
      c.write(extRequest(CMD.BLOCK_STATUS, { cookie: 8n, offset: 0, length: BigInt(BIG) }));
      const after = decodeStatusExt((await readExtReply(c))[0]!).extents;
      expect(after.reduce((n, e) => n + e.length, 0n)).toBe(BigInt(BIG));
      expect(after.every((e) => e.status & ZERO)).toBe(true);
    } finally {
      c.close();
    }
  });
});
