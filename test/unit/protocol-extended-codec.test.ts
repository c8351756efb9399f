/**
 * Extended-headers codec (src/protocol/extended-codec.ts, chunk-writer.ts) against hand-written
 * hex from the specification's layouts, and the PAYLOAD_LEN rules of request validation.
 */
import { describe, expect, it } from 'vitest';
import { decodeExtendedRequestHeader, decodeStatusPayload, encodeBlockStatusExtChunk } from '../../src/protocol/extended-codec.js';
import { EXTENDED_CHUNKS, STRUCTURED_CHUNKS } from '../../src/protocol/chunk-writer.js';
import { encodeBlockStatusChunk, encodeErrorChunk, encodeNoneChunk } from '../../src/protocol/transmission-codec.js';
import { ProtocolError } from '../../src/protocol/nbd-errors.js';
import { statusPayloadRequest, validateRequest, type ValidationContext } from '../../src/server/request-rules.js';
import { CMD, ERR } from '../helpers/nbd-fixtures.js';
import { extRequest, statusPayload } from '../helpers/nbd-extended.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('extended request header', () => {
  it('decodes a 32-byte header with a u64 length above 4 GiB', () => {
    const h = decodeExtendedRequestHeader(hex('21e41c71 0020 0006 deadbeefcafef00d 0000000100000200 0000000140000000'));
    expect(h).toEqual({ flags: 0x20, type: 6, cookieHi: 0xdeadbeef, cookieLo: 0xcafef00d, offset: 2 ** 32 + 512, length: 5 * 2 ** 30, offsetHi: 1, offsetLo: 512 });
  });
  it('agrees with the independent test encoder', () => {
    const h = decodeExtendedRequestHeader(extRequest(CMD.BLOCK_STATUS, { flags: 8, cookie: 42n, offset: 4096n, length: 2n ** 40n }));
    expect(h).toMatchObject({ flags: 8, type: CMD.BLOCK_STATUS, cookieHi: 0, cookieLo: 42, offset: 4096, length: 2 ** 40 });
  });
  it('refuses the compact magic (a protocol error: the connection closes)', () => {
    expect(() => decodeExtendedRequestHeader(hex('25609513 0000 0000 0000000000000001 0000000000000000 00000200 00000000'))).toThrow(ProtocolError);
  });
});

describe('extended reply chunks', () => {
  const to = { cookieHi: 0x01020304, cookieLo: 0x05060708, offset: 0x1000, offsetHi: 0, offsetLo: 0x1000 };
  it('NONE: 32-byte header echoing cookie and offset, DONE', () => {
    expect(EXTENDED_CHUNKS.none(to)).toEqual(hex('6e8a278c 0001 0000 0102030405060708 0000000000001000 0000000000000000'));
  });
  it('ERROR_OFFSET: error, message, offset after the extended header', () => {
    expect(EXTENDED_CHUNKS.error(to, ERR.EINVAL, 'no', 0x1200)).toEqual(
      hex('6e8a278c 0001 8002 0102030405060708 0000000000001000 0000000000000010' + '00000016 0002 6e6f 0000000000001200'),
    );
  });
  it('OFFSET_DATA and OFFSET_HOLE headers', () => {
    const b = Buffer.alloc(EXTENDED_CHUNKS.dataHeaderSize + EXTENDED_CHUNKS.holeSize);
    EXTENDED_CHUNKS.writeDataHeader(b, 0, false, to, 0x1100, 4);
    EXTENDED_CHUNKS.writeHole(b, EXTENDED_CHUNKS.dataHeaderSize, true, to, 0x1200, 0x300);
    expect(b).toEqual(
      hex(
        '6e8a278c 0000 0001 0102030405060708 0000000000001000 000000000000000c 0000000000001100' +
          '6e8a278c 0001 0002 0102030405060708 0000000000001000 000000000000000c 0000000000001200 00000300',
      ),
    );
  });
  it('an offset above 2^53 is echoed from its halves, exactly', () => {
    const far = { cookieHi: 0, cookieLo: 1, offset: 2 ** 64, offsetHi: 0xffffffff, offsetLo: 0xfffffff1 };
    expect(EXTENDED_CHUNKS.none(far).subarray(16, 24)).toEqual(hex('fffffffffffffff1'));
  });
  it('BLOCK_STATUS_EXT: id, count, u64 length and status per descriptor', () => {
    expect(encodeBlockStatusExtChunk(to, true, 2, [5 * 2 ** 30, 3, 512, 0])).toEqual(
      hex('6e8a278c 0001 0006 0102030405060708 0000000000001000 0000000000000028' + '00000002 00000002 0000000140000000 0000000000000003 0000000000000200 0000000000000000'),
    );
  });
  it('the structured writer produces exactly the compact-era chunks (clients that do not ask see no change)', () => {
    expect(STRUCTURED_CHUNKS.none(to)).toEqual(encodeNoneChunk(to.cookieHi, to.cookieLo));
    expect(STRUCTURED_CHUNKS.error(to, 5, 'x', 7)).toEqual(encodeErrorChunk(to.cookieHi, to.cookieLo, 5, 'x', 7));
    expect(STRUCTURED_CHUNKS.blockStatus(to, false, 1, [512, 3])).toEqual(encodeBlockStatusChunk(to.cookieHi, to.cookieLo, false, 1, [512, 3]));
  });
});

describe('BLOCK_STATUS payload', () => {
  it.each([
    ['one id', statusPayload(4096, [2]), { length: 4096, ids: [2] }],
    ['two ids, u64 effect length', statusPayload(2n ** 33n, [1, 2]), { length: 2 ** 33, ids: [1, 2] }],
    ['no id', statusPayload(4096, []), /at least one context id/],
    ['a duplicate', statusPayload(4096, [1, 1]), /names context id 1 twice/],
    ['10 bytes', Buffer.alloc(10), /is 10 bytes/],
  ])('%s', (_n, payload, want) => {
    const got = decodeStatusPayload(payload);
    if (want instanceof RegExp) expect(got).toMatch(want);
    else expect(got).toEqual(want);
  });
});

describe('PAYLOAD_LEN in request validation', () => {
  const base: ValidationContext = { size: 2 ** 34, writable: true, structured: true, hasContexts: true };
  const ext: ValidationContext = { ...base, extended: true, statusPayload: true };
  const check = (ctx: ValidationContext, type: number, flags: number, length = 512) =>
    validateRequest(decodeExtendedRequestHeader(extRequest(type, { flags, length })), ctx)?.error ?? 0;
  it.each([
    ['WRITE with PAYLOAD_LEN, extended', ext, CMD.WRITE, 0x20, 0],
    ['WRITE with PAYLOAD_LEN, compact session', base, CMD.WRITE, 0x20, ERR.EINVAL],
    ['READ with PAYLOAD_LEN', ext, CMD.READ, 0x20, ERR.EINVAL],
    ['BLOCK_STATUS with PAYLOAD_LEN, advertised', ext, CMD.BLOCK_STATUS, 0x20, 0],
    ['BLOCK_STATUS with PAYLOAD_LEN, not advertised', { ...ext, statusPayload: false }, CMD.BLOCK_STATUS, 0x20, ERR.EINVAL],
  ])('%s', (_n, ctx, type, flags, want) => {
    expect(check(ctx, type, flags)).toBe(want);
  });
  it('a u64 TRIM length of 8 GiB is valid, one above 2^53 is EINVAL', () => {
    expect(check(ext, CMD.TRIM, 0, 8 * 2 ** 30)).toBe(0);
    expect(validateRequest(decodeExtendedRequestHeader(extRequest(CMD.TRIM, { length: 2n ** 60n })), ext)?.error).toBe(ERR.EINVAL);
  });
  it('statusPayloadRequest: the effect length replaces the payload length; unknown ids are EINVAL', () => {
    const h = decodeExtendedRequestHeader(extRequest(CMD.BLOCK_STATUS, { flags: 0x28, payload: statusPayload(2 ** 33, [2]) }));
    expect(statusPayloadRequest(h, statusPayload(2 ** 33, [2]), [1, 2])).toMatchObject({ flags: 0x08, length: 2 ** 33 });
    expect(statusPayloadRequest(h, statusPayload(4096, [3]), [1, 2])).toMatchObject({ error: ERR.EINVAL });
  });
});
