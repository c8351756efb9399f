import { describe, expect, it } from 'vitest';
import {
  decodeRequestHeader,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeSimpleReply,
  writeOffsetDataHeader,
  writeOffsetHole,
} from '../../src/protocol/transmission-codec.js';
import { ProtocolError, toNbdError } from '../../src/protocol/nbd-errors.js';
import { DeviceError } from '../../src/block/block-device.js';
import { CMD, request } from '../helpers/nbd-fixtures.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('request header decoding (hand-written hex fixtures)', () => {
  it.each([
    {
      name: 'READ 512 @ 1 MiB',
      hex: '25609513 0000 0000 0000000000000007 0000000000100000 00000200',
      want: { flags: 0, type: 0, cookieHi: 0, cookieLo: 7, offset: 0x100000, length: 512 },
    },
    {
      name: 'WRITE_ZEROES FUA|NO_HOLE|FAST_ZERO, 4 GiB-1, offset > 4 GiB',
      hex: '25609513 0013 0006 deadbeefcafef00d 0000000100000000 ffffffff',
      want: { flags: 0x13, type: 6, cookieHi: 0xdeadbeef, cookieLo: 0xcafef00d, offset: 2 ** 32, length: 0xffffffff },
    },
  ])('$name', ({ hex: h, want }) => {
    expect(decodeRequestHeader(hex(h))).toEqual(want);
  });

  it('agrees with the independent fixture encoder', () => {
    const b = request(CMD.BLOCK_STATUS, { flags: 8, cookie: 42n, offset: 12345n, length: 999 });
    expect(decodeRequestHeader(b)).toEqual({ flags: 8, type: 7, cookieHi: 0, cookieLo: 42, offset: 12345, length: 999 });
  });

  it('rejects a bad magic with a ProtocolError', () => {
    const b = hex('25609514 0000 0000 0000000000000001 0000000000000000 00000000');
    expect(() => decodeRequestHeader(b)).toThrow(ProtocolError);
  });

  it('keeps offsets above 2^53 unsafe so validation can reject them', () => {
    const b = hex('25609513 0000 0000 0000000000000001 ffffffffffffffff 00000001');
    expect(Number.isSafeInteger(decodeRequestHeader(b).offset)).toBe(false);
  });
});

describe('reply encoding (exact bytes)', () => {
  it('simple reply', () => {
    expect(encodeSimpleReply(22, 0x01020304, 0x05060708).toString('hex')).toBe('67446698' + '00000016' + '0102030405060708');
  });

  it('NONE chunk carries DONE', () => {
    expect(encodeNoneChunk(0, 9).toString('hex')).toBe('668e33ef' + '0001' + '0000' + '0000000000000009' + '00000000');
  });

  it('ERROR and ERROR_OFFSET chunks', () => {
    expect(encodeErrorChunk(0, 1, 5, 'io').toString('hex')).toBe(
      '668e33ef' + '0001' + '8001' + '0000000000000001' + '00000008' + '00000005' + '0002' + '696f',
    );
    expect(encodeErrorChunk(0, 1, 22, '', 0x100000000).toString('hex')).toBe(
      '668e33ef' + '0001' + '8002' + '0000000000000001' + '0000000e' + '00000016' + '0000' + '0000000100000000',
    );
  });

  it('OFFSET_DATA header and OFFSET_HOLE chunk', () => {
    const b = Buffer.alloc(28 + 3);
    writeOffsetDataHeader(b, 0, true, 0, 2, 4096, 3);
    expect(b.subarray(0, 28).toString('hex')).toBe('668e33ef' + '0001' + '0001' + '0000000000000002' + '0000000b' + '0000000000001000');
    const h = Buffer.alloc(32);
    writeOffsetHole(h, 0, false, 0, 2, 8192, 65536);
    expect(h.toString('hex')).toBe('668e33ef' + '0000' + '0002' + '0000000000000002' + '0000000c' + '0000000000002000' + '00010000');
  });

  it('BLOCK_STATUS chunk', () => {
    expect(encodeBlockStatusChunk(0, 3, true, 1, [4096, 3, 512, 0]).toString('hex')).toBe(
      '668e33ef' + '0001' + '0005' + '0000000000000003' + '00000014' + '00000001' + '00001000' + '00000003' + '00000200' + '00000000',
    );
  });
});

describe('toNbdError', () => {
  it.each([
    ['EPERM', 1],
    ['EROFS', 1],
    ['EIO', 5],
    ['EINVAL', 22],
    ['ENOSPC', 28],
    ['EDQUOT', 28],
    ['EFBIG', 28],
    ['ENOTSUP', 95],
    ['ESHUTDOWN', 108],
    ['EWHATEVER', 5],
  ])('%s → %i', (code, nbd) => {
    expect(toNbdError(Object.assign(new Error('x'), { code }))).toBe(nbd);
  });

  it('maps DeviceError and plain errors', () => {
    expect(toNbdError(new DeviceError('ENOSPC', 'full'))).toBe(28);
    expect(toNbdError(new Error('no code'))).toBe(5);
    expect(toNbdError(undefined)).toBe(5);
  });
});
