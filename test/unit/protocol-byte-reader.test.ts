import { describe, expect, it } from 'vitest';
import { ByteReader } from '../../src/protocol/byte-reader.js';
import { ProtocolError } from '../../src/protocol/nbd-errors.js';
import { decodeRequestHeader } from '../../src/protocol/transmission-codec.js';
import { CMD, request } from '../helpers/nbd-fixtures.js';

/** A WRITE (header + 5-byte payload) followed by a READ header, as one byte stream. */
const payload = Buffer.from('hello');
const stream = Buffer.concat([
  request(CMD.WRITE, { flags: 1, cookie: 0x0102030405060708n, offset: 4096, payload }),
  request(CMD.READ, { cookie: 0xfffffffffffffffen, offset: 0x123456789an, length: 512 }),
]);

function consume(reader: ByteReader) {
  const w = decodeRequestHeader(reader.take(28));
  const data = Buffer.from(reader.take(w.length));
  const r = decodeRequestHeader(reader.take(28));
  return { w, data, r };
}

describe('ByteReader', () => {
  it('hands out exact messages when the stream is split at every byte offset', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      for (let cut2 = cut; cut2 <= stream.length; cut2 += 7) {
        const reader = new ByteReader();
        reader.push(stream.subarray(0, cut));
        reader.push(stream.subarray(cut, cut2));
        reader.push(stream.subarray(cut2));
        expect(reader.length).toBe(stream.length);
        const { w, data, r } = consume(reader);
        expect(w).toEqual({ flags: 1, type: CMD.WRITE, cookieHi: 0x01020304, cookieLo: 0x05060708, offset: 4096, length: 5 });
        expect(data.toString()).toBe('hello');
        expect(r).toEqual({ flags: 0, type: CMD.READ, cookieHi: 0xffffffff, cookieLo: 0xfffffffe, offset: 0x123456789a, length: 512 });
        expect(reader.length).toBe(0);
      }
    }
  });

  it('returns a view (no copy) when a message lies inside one chunk', () => {
    const reader = new ByteReader();
    const chunk = Buffer.from(stream);
    reader.push(chunk);
    const view = reader.take(28);
    expect(view.buffer).toBe(chunk.buffer);
    expect(view.byteOffset).toBe(chunk.byteOffset);
  });

  it('readExactly waits for bytes fed one at a time', async () => {
    const reader = new ByteReader();
    const p = reader.readExactly(10);
    for (let i = 0; i < 10; i++) reader.push(Buffer.from([i]));
    expect([...(await p)]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('skip discards across chunks and reports how much it dropped', () => {
    const reader = new ByteReader();
    reader.push(Buffer.alloc(3, 1));
    reader.push(Buffer.alloc(4, 2));
    expect(reader.skip(5)).toBe(5);
    expect([...reader.take(2)]).toEqual([2, 2]);
    expect(reader.skip(10)).toBe(0);
  });

  it('rejects readExactly at EOF: clean at a boundary, truncated mid-message', async () => {
    const a = new ByteReader();
    const pa = a.readExactly(4);
    a.end();
    await expect(pa).rejects.toMatchObject({ code: 'NBD_ERR_EOF' });
    const b = new ByteReader();
    b.push(Buffer.alloc(2));
    const pb = b.readExactly(4);
    b.end();
    const err = await pb.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err).toMatchObject({ code: 'NBD_ERR_TRUNCATED' });
  });

  it('refuses take() beyond what is buffered', () => {
    const reader = new ByteReader();
    reader.push(Buffer.alloc(3));
    expect(() => reader.take(4)).toThrow(RangeError);
  });
});

describe('ByteReader with transient chunks (shared reads)', () => {
  it('settle() copies what is still buffered, so reusing the memory cannot change it', () => {
    const shared = Buffer.alloc(64);
    for (let i = 0; i < 64; i++) shared[i] = i;
    const r = new ByteReader();
    r.push(shared.subarray(0, 10), true);
    expect([...r.take(4)]).toEqual([0, 1, 2, 3]);
    r.settle();
    shared.fill(0xee); // the next read lands in the same memory
    r.push(shared.subarray(0, 2), true);
    expect([...r.take(8)]).toEqual([4, 5, 6, 7, 8, 9, 0xee, 0xee]);
    r.settle();
    expect(r.length).toBe(0);
  });

  it('takeInto() fills a payload across reads and reports how much it copied', () => {
    const shared = Buffer.alloc(8);
    const target = Buffer.alloc(12);
    const r = new ByteReader();
    let filled = 0;
    for (let read = 0; read < 3; read++) {
      shared.fill(read + 1);
      r.push(shared.subarray(0, 5), true);
      filled += r.takeInto(target, filled, target.length - filled);
      r.settle();
    }
    expect(filled).toBe(12);
    expect([...target]).toEqual([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]);
    expect(r.length).toBe(3); // the rest of the third read stays buffered (as a copy)
    shared.fill(9);
    expect([...r.take(3)]).toEqual([3, 3, 3]);
  });

  it('a readExactly() completed by a transient chunk resolves with a copy', async () => {
    const shared = Buffer.from([1, 2, 3, 4]);
    const r = new ByteReader();
    const p = r.readExactly(3);
    r.push(shared, true);
    r.settle();
    shared.fill(0);
    expect([...(await p)]).toEqual([1, 2, 3]);
    shared.set([5, 6, 7, 8]);
    const r2 = new ByteReader();
    r2.push(shared, true);
    const q = r2.readExactly(2); // already buffered, still a view of the shared memory
    shared.fill(0);
    r2.settle();
    expect([...(await q)]).toEqual([5, 6]);
  });
});
