/**
 * IoPolicy and FileIo: the environment switches map onto the policy object the CLI
 * builds once, and every combination of fast paths reads and writes the same bytes on a
 * real file (the fallbacks are real code paths, selected by the object, not by globals).
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileIo, readFully, writeFully } from '../../src/block/file-io.js';
import { defaultIoPolicy, ioPolicyFromEnv, withoutNative, type IoPolicy } from '../../src/block/io-policy.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cownbd-io-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ioPolicyFromEnv', () => {
  it('turns each documented switch off, and nothing else', () => {
    const base = ioPolicyFromEnv({});
    expect(base).toMatchObject({ nowaitReads: true, batchWrites: true, syncWrites: true, sharedReads: true });
    expect(base.native).toBe(defaultIoPolicy().native);
    expect(ioPolicyFromEnv({ COWNBD_NO_NATIVE: '1' }).native).toBeUndefined();
    expect(ioPolicyFromEnv({ COWNBD_NO_NATIVE: '1' }).nativeUnavailableReason).toMatch(/COWNBD_NO_NATIVE/);
    expect(ioPolicyFromEnv({ COWNBD_NO_NOWAIT: '1' }).nowaitReads).toBe(false);
    expect(ioPolicyFromEnv({ COWNBD_NO_BATCH: '1' }).batchWrites).toBe(false);
    expect(ioPolicyFromEnv({ COWNBD_SYNC_WRITES: '0' }).syncWrites).toBe(false);
    expect(ioPolicyFromEnv({ COWNBD_NO_SHARED_READS: '1' }).sharedReads).toBe(false);
    expect(ioPolicyFromEnv({ COWNBD_NO_BATCH: '0', COWNBD_SYNC_WRITES: '1' })).toMatchObject({ batchWrites: true, syncWrites: true });
  });
});

describe('FileIo', () => {
  const policies: Array<[string, IoPolicy]> = [
    ['every fast path', defaultIoPolicy()],
    ['no fast path', { ...withoutNative(defaultIoPolicy()), nowaitReads: false, batchWrites: false, syncWrites: false }],
    ['batching only', { ...defaultIoPolicy(), nowaitReads: false, syncWrites: false }],
  ];
  it.each(policies)('%s: many concurrent writes land where they were aimed, reads past EOF are zeros', async (name, policy) => {
    const io = new FileIo(policy);
    const file = path.join(dir, `${name.replace(/\s/g, '-')}.img`);
    const fh = await open(file, 'w+');
    try {
      const blocks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(i % 2 ? 4096 : 100 * 1024, i + 1));
      const offsets = blocks.map((_, i) => i * 128 * 1024);
      await Promise.all(blocks.map((b, i) => io.write(fh, offsets[i]!, b)));
      for (let i = 0; i < blocks.length; i++) {
        const got = Buffer.alloc(blocks[i]!.length);
        await io.read(fh, offsets[i]!, got);
        expect(got.equals(blocks[i]!)).toBe(true);
        const plain = Buffer.alloc(blocks[i]!.length);
        await readFully(fh, offsets[i]!, plain);
        expect(plain.equals(blocks[i]!)).toBe(true);
      }
      const end = (await fh.stat()).size;
      const tail = Buffer.alloc(8192, 0xff);
      await io.read(fh, end - 4096, tail);
      expect(tail.subarray(0, 4096).every((b) => b === 64)).toBe(true);
      expect(tail.subarray(4096).every((b) => b === 0)).toBe(true);
      await writeFully(fh, 1, Buffer.from('xy'));
      const two = Buffer.alloc(2);
      await io.read(fh, 1, two);
      expect(two.toString()).toBe('xy');
    } finally {
      await fh.close();
    }
  });
});
