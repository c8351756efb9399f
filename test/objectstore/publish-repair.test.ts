/**
 * publish repairs damaged chunks in the bucket (issue 21 item 8): a stored chunk with the
 * wrong length is uploaded again by any publish; one with the right length and wrong bytes
 * by `publish --verify`. Real CLI against our in-process S3 server.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { MiB, publish } from './s3-helpers.js';

describe('publish repairs damaged chunks', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-repair-');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('a truncated chunk is re-uploaded by publish; a bit-flipped one by publish --verify', async () => {
    const img = createRawImage(tmp.file('r.raw'), 4 * MiB, [[0, 4 * MiB]], 51);
    const key = (i: number) => `cownbd-chunks/sha256/${createHash('sha256').update(pattern(i * MiB, MiB, 51)).digest('hex')}`;
    const first = await publish(s3, img, 's3://golden/r');
    expect(first.uploadedChunks).toBe(4);
    const good1 = Buffer.from(s3.object('golden', key(1))!);
    const good2 = Buffer.from(s3.object('golden', key(2))!);
    s3.putObject('golden', key(1), good1.subarray(0, MiB / 2)); // torn upload
    const flipped = Buffer.from(good2);
    flipped[1000]! ^= 1;
    s3.putObject('golden', key(2), flipped); // bit rot: same length

    const again = await publish(s3, img, 's3://golden/r');
    expect(again.repairedChunks).toBe(1);
    expect(again.presentChunks).toBe(3);
    expect(s3.object('golden', key(1))!.equals(good1)).toBe(true);
    expect(s3.object('golden', key(2))!.equals(flipped)).toBe(true); // HEAD cannot see it

    const verified = await publish(s3, img, 's3://golden/r', ['--verify']);
    expect(verified.repairedChunks).toBe(1);
    expect(s3.object('golden', key(2))!.equals(good2)).toBe(true);
    const clean = await publish(s3, img, 's3://golden/r', ['--verify']);
    expect(clean.repairedChunks).toBe(0);
    expect(clean.uploadedChunks).toBe(0);
  });
});
