import { describe, expect, it } from 'vitest';
import { validateRequest, type ValidationContext } from '../../src/server/request-rules.js';
import { decodeRequestHeader } from '../../src/protocol/transmission-codec.js';
import { CMD, ERR, request } from '../helpers/nbd-fixtures.js';

const SIZE = 1 << 20;
const rw: ValidationContext = { size: SIZE, writable: true, structured: true, hasContexts: true };
const ro: ValidationContext = { ...rw, writable: false };
const simple: ValidationContext = { ...rw, structured: false, hasContexts: false };

const FUA = 1, NO_HOLE = 2, DF = 4, REQ_ONE = 8, FAST_ZERO = 16;

function check(ctx: ValidationContext, type: number, opts: { flags?: number; offset?: bigint | number; length?: number }) {
  return validateRequest(decodeRequestHeader(request(type, opts)), ctx)?.error ?? 0;
}

describe('request validation rules (spec error table)', () => {
  it.each([
    // name, ctx, type, opts, expected
    ['READ in range', rw, CMD.READ, { offset: 0, length: 4096 }, 0],
    ['READ ending exactly at the end', rw, CMD.READ, { offset: SIZE - 1, length: 1 }, 0],
    ['READ past the end', rw, CMD.READ, { offset: SIZE - 1, length: 2 }, ERR.EINVAL],
    ['READ at offset 2^64-1', rw, CMD.READ, { offset: 0xffffffffffffffffn, length: 1 }, ERR.EINVAL],
    ['READ zero-length at the end', rw, CMD.READ, { offset: SIZE, length: 0 }, 0],
    ['READ with DF (structured)', rw, CMD.READ, { flags: DF, length: 512 }, 0],
    ['READ with DF (simple replies)', simple, CMD.READ, { flags: DF, length: 512 }, ERR.EINVAL],
    ['READ with FUA', rw, CMD.READ, { flags: FUA, length: 512 }, 0],
    ['READ with REQ_ONE', rw, CMD.READ, { flags: REQ_ONE, length: 512 }, ERR.EINVAL],
    ['READ with unknown flag 0x100', rw, CMD.READ, { flags: 0x100, length: 512 }, ERR.EINVAL],
    ['READ over 32 MiB', { ...rw, size: 1 << 30 }, CMD.READ, { length: 32 * 1024 * 1024 + 1 }, ERR.EINVAL],
    ['READ of exactly 32 MiB', { ...rw, size: 1 << 30 }, CMD.READ, { length: 32 * 1024 * 1024 }, 0],
    ['READ on read-only', ro, CMD.READ, { length: 512 }, 0],
    ['WRITE past the end', rw, CMD.WRITE, { offset: SIZE, length: 1 }, ERR.ENOSPC],
    ['WRITE on read-only', ro, CMD.WRITE, { length: 1 }, ERR.EPERM],
    ['WRITE with NO_HOLE', rw, CMD.WRITE, { flags: NO_HOLE, length: 1 }, ERR.EINVAL],
    ['WRITE over 32 MiB', { ...rw, size: 1 << 30 }, CMD.WRITE, { length: 33 * 1024 * 1024 }, ERR.EINVAL],
    ['FLUSH', rw, CMD.FLUSH, {}, 0],
    ['FLUSH on read-only', ro, CMD.FLUSH, {}, 0],
    ['FLUSH with DF', rw, CMD.FLUSH, { flags: DF }, ERR.EINVAL],
    ['TRIM past the end', rw, CMD.TRIM, { offset: 1, length: SIZE }, ERR.EINVAL],
    ['TRIM on read-only', ro, CMD.TRIM, { length: 512 }, ERR.EPERM],
    ['TRIM of ~4 GiB on a big disk', { ...rw, size: 8 * 2 ** 30 }, CMD.TRIM, { length: 0xfffffe00 }, 0],
    ['CACHE past the end', rw, CMD.CACHE, { offset: SIZE, length: 1 }, ERR.EINVAL],
    ['WRITE_ZEROES with NO_HOLE|FAST_ZERO|FUA', rw, CMD.WRITE_ZEROES, { flags: NO_HOLE | FAST_ZERO | FUA, length: 512 }, 0],
    ['WRITE_ZEROES past the end', rw, CMD.WRITE_ZEROES, { offset: SIZE - 1, length: 2 }, ERR.ENOSPC],
    ['WRITE_ZEROES on read-only', ro, CMD.WRITE_ZEROES, { length: 1 }, ERR.EPERM],
    ['WRITE_ZEROES with DF', rw, CMD.WRITE_ZEROES, { flags: DF, length: 1 }, ERR.EINVAL],
    ['BLOCK_STATUS with REQ_ONE', rw, CMD.BLOCK_STATUS, { flags: REQ_ONE, length: 512 }, 0],
    ['BLOCK_STATUS past the end', rw, CMD.BLOCK_STATUS, { offset: SIZE, length: 1 }, ERR.EINVAL],
    ['BLOCK_STATUS without contexts', { ...rw, hasContexts: false }, CMD.BLOCK_STATUS, { length: 512 }, ERR.EINVAL],
    ['BLOCK_STATUS with simple replies', simple, CMD.BLOCK_STATUS, { length: 512 }, ERR.EINVAL],
    ['BLOCK_STATUS with NO_HOLE', rw, CMD.BLOCK_STATUS, { flags: NO_HOLE, length: 512 }, ERR.EINVAL],
    ['unknown command 8 (RESIZE)', rw, 8, {}, ERR.EINVAL],
    ['unknown command 0xffff', rw, 0xffff, {}, ERR.EINVAL],
  ] as const)('%s', (_name, ctx, type, opts, want) => {
    expect(check(ctx, type, opts)).toBe(want);
  });

  it('names the command and the numbers in its messages', () => {
    const r = validateRequest(decodeRequestHeader(request(CMD.WRITE, { offset: SIZE, length: 7 })), rw);
    expect(r?.message).toBe(`WRITE: offset=${SIZE} length=7 extends past the end of the export (size=${SIZE})`);
  });
});
