/**
 * Damage in the bucket (issue 21 item 8): `publish` repairs a stored chunk with the wrong
 * length, `publish --verify` one with the right length and wrong bytes; `fsck` finds missing
 * and damaged chunks and bad manifests, naming the versions they hit. Real CLI against our
 * in-process S3 server.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { cownbd, MiB, publish } from './s3-helpers.js';

describe('damaged chunks in the bucket: publish repairs, fsck finds', () => {
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

  it('fsck: clean, then missing / damaged chunks and a bad manifest are found with the versions they hit; --quick sees lengths only; store down is exit 1', async () => {
    const a = createRawImage(tmp.file('fa.raw'), 3 * MiB, [[0, 3 * MiB]], 61);
    const b = createRawImage(tmp.file('fb.raw'), 3 * MiB, [[0, 2 * MiB]], 61); // shares chunks 0-1 with a
    const key = (i: number) => `cownbd-chunks/sha256/${createHash('sha256').update(pattern(i * MiB, MiB, 61)).digest('hex')}`;
    const va = (await publish(s3, a, 's3://golden/fs')).version;
    const vb = (await publish(s3, b, 's3://golden/fs')).version;
    const fsck = async (extra: string[] = []) => {
      const r = await cownbd(s3, ['fsck', 's3://golden/fs', '--json', ...extra]);
      return { code: r.code, doc: JSON.parse(r.stdout) as { result: string; chunks: number; problems: Array<{ what: string; problem: string; versions: string[] }>; error: string | null } };
    };
    const clean = await fsck();
    expect(clean.code).toBe(0);
    expect(clean.doc).toMatchObject({ result: 'clean', chunks: 3, problems: [] });

    const good0 = Buffer.from(s3.object('golden', key(0))!);
    const flipped = Buffer.from(good0);
    flipped[77]! ^= 4;
    s3.putObject('golden', key(0), flipped);
    s3.deleteObject('golden', key(2));
    const bad = await fsck();
    expect(bad.code).toBe(2);
    const byWhat = new Map(bad.doc.problems.map((p) => [p.what, p]));
    expect(byWhat.get(key(0).split('/').pop()!)).toMatchObject({ problem: 'damaged' });
    expect(byWhat.get(key(0).split('/').pop()!)!.versions.sort()).toEqual([va, vb].sort());
    expect(byWhat.get(key(2).split('/').pop()!)).toMatchObject({ problem: 'missing', versions: [va] });
    const quick = await fsck(['--quick']);
    expect(quick.code).toBe(2);
    expect(quick.doc.problems.map((p) => p.problem)).toEqual(['missing']); // a flipped bit has the right length

    s3.putObject('golden', `fs/manifests/${vb}.json`, Buffer.from('{"format":"cownbd-manifest"'));
    const manifest = await fsck(['--quick']);
    expect(manifest.doc.problems.some((p) => p.problem === 'manifest' && p.what === vb)).toBe(true);

    // publish repairs what fsck found; fsck of the repaired version is clean again.
    const repaired = await publish(s3, a, 's3://golden/fs', ['--verify']);
    expect(repaired.repairedChunks).toBe(1); // the flipped chunk; the missing one is simply uploaded
    expect(s3.object('golden', key(0))!.equals(good0)).toBe(true);
    expect((await cownbd(s3, ['fsck', `s3://golden/fs@${va}`, '--json'])).code).toBe(0);

    await s3.stop();
    try {
      const down = await cownbd(s3, ['fsck', 's3://golden/fs', '--json', '--s3-timeout', '2000']);
      expect(down.code).toBe(1);
      expect((JSON.parse(down.stdout) as { result: string }).result).toBe('error');
    } finally {
      await s3.start();
    }
  });
});
