/**
 * `cownbd gc s3://BUCKET` (issue 21 item 8): dry-run by default; deletes only chunk objects
 * no manifest names and older than the grace period; stops on a manifest it cannot read;
 * a publish racing it loses nothing. Real CLI against our in-process S3 server.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, pattern, type TempDir } from '../helpers/images.js';
import { cownbd, MiB, publish } from './s3-helpers.js';

const DAY = 86_400_000;
const chunkKey = (data: Buffer) => `cownbd-chunks/sha256/${createHash('sha256').update(data).digest('hex')}`;

interface GcDoc {
  manifests: number;
  unreferenced: Array<{ key: string }>;
  young: number;
  deleted: number;
  dryRun: boolean;
}

describe('gc of unreferenced chunks', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-gc-');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  const gc = async (extra: string[] = []) => {
    const r = await cownbd(s3, ['gc', 's3://golden', '--json', ...extra]);
    return { code: r.code, r, doc: (r.code === 0 ? JSON.parse(r.stdout) : undefined) as GcDoc | undefined };
  };

  it('dry-run lists, --delete removes only old unreferenced chunks; referenced and young ones stay; an unreadable manifest stops it', async () => {
    const a = createRawImage(tmp.file('a.raw'), 2 * MiB, [[0, 2 * MiB]], 71);
    await publish(s3, a, 's3://golden/ga');
    const used = [0, 1].map((i) => chunkKey(pattern(i * MiB, MiB, 71)));
    for (const k of used) s3.backdate('golden', k, 2 * DAY); // old, but named by a manifest
    const old = chunkKey(Buffer.alloc(1000, 1));
    const young = chunkKey(Buffer.alloc(1000, 2));
    s3.putObject('golden', old, Buffer.alloc(1000, 1));
    s3.backdate('golden', old, 2 * DAY);
    s3.putObject('golden', young, Buffer.alloc(1000, 2));

    const dry = await gc();
    expect(dry.code, dry.r.stderr).toBe(0);
    expect(dry.doc).toMatchObject({ dryRun: true, young: 1, deleted: 0 });
    expect(dry.doc!.unreferenced.map((x) => x.key)).toEqual([old]);
    expect(s3.object('golden', old)).toBeDefined();

    const del = await gc(['--delete']);
    expect(del.doc).toMatchObject({ dryRun: false, deleted: 1 });
    expect(s3.object('golden', old)).toBeUndefined();
    expect(s3.object('golden', young)).toBeDefined();
    for (const k of used) expect(s3.object('golden', k)).toBeDefined();
    expect((await cownbd(s3, ['fsck', 's3://golden/ga'])).code).toBe(0);

    // A manifest gc cannot read may name chunks: it stops and deletes nothing.
    s3.backdate('golden', young, 2 * DAY);
    s3.putObject('golden', 'gb/manifests/20261201T000000.000Z-00000000.json', Buffer.from('{"format":'));
    const stopped = await gc(['--delete']);
    expect(stopped.code).not.toBe(0);
    expect(stopped.r.stderr).toMatch(/gb\/manifests\/20261201T000000\.000Z-00000000\.json/);
    expect(s3.object('golden', young)).toBeDefined();
    s3.deleteObject('golden', 'gb/manifests/20261201T000000.000Z-00000000.json');
  });

  it('a publish racing gc --delete loses nothing: a stored chunk it relied on and gc deleted is uploaded again before its manifest', async () => {
    const c = createRawImage(tmp.file('c.raw'), 3 * MiB, [[0, 3 * MiB]], 72);
    const orphan = chunkKey(pattern(0, MiB, 72));
    s3.putObject('golden', orphan, pattern(0, MiB, 72)); // left by an old, since deleted image
    s3.backdate('golden', orphan, 2 * DAY);
    // publish's HEAD finds the orphan stored, but its answer is held back while gc deletes it.
    s3.inject({ method: 'HEAD', key: orphan, fault: { kind: 'delay', ms: 6000 }, times: 1 });
    const pub = publish(s3, c, 's3://golden/race');
    for (let i = 0; i < 200 && !s3.requests.some((r) => r.method === 'HEAD' && r.key === orphan); i++) await new Promise((r) => setTimeout(r, 25));
    const swept = await gc(['--delete', '--grace', '1h']);
    expect(swept.code, swept.r.stderr).toBe(0);
    expect(swept.doc!.unreferenced.map((x) => x.key)).toContain(orphan);
    expect(s3.object('golden', orphan)).toBeUndefined();
    const result = await pub;
    expect(result.repairedChunks).toBeGreaterThanOrEqual(1);
    expect(s3.object('golden', orphan)!.equals(pattern(0, MiB, 72))).toBe(true);
    expect((await cownbd(s3, ['fsck', 's3://golden/race'])).code).toBe(0);
  });
});
