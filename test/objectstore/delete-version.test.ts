/**
 * `cownbd delete s3://BUCKET/PREFIX@VERSION` (issue 21): withdraws one version's manifest;
 * refused without an explicit version, for a version that does not exist, and while an
 * overlay given with --overlays pins it (unless --force); `gc` then reclaims exactly the
 * chunks no remaining version names. Real CLI against our in-process S3 server.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed } from '../helpers/clients.js';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { cownbd, MiB, publish } from './s3-helpers.js';

const chunkKey = (data: Buffer) => `cownbd-chunks/sha256/${createHash('sha256').update(data).digest('hex')}`;

describe('deleting a published version', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-delete-');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('refused without @VERSION, for an unknown version, while an overlay pins it or cannot be checked; --force deletes; gc reclaims only its own chunks', async () => {
    const a = createRawImage(tmp.file('a.raw'), 3 * MiB, [[0, 3 * MiB]], 81);
    const bytesA = readFileSync(a);
    const bytesB = Buffer.concat([bytesA.subarray(0, 2 * MiB), Buffer.alloc(MiB, 7)]); // shares chunks 0 and 1
    const b = tmp.file('b.raw');
    writeFileSync(b, bytesB);
    const va = (await publish(s3, a, 's3://golden/del')).version;
    const vb = (await publish(s3, b, 's3://golden/del')).version;
    const onlyA = chunkKey(bytesA.subarray(2 * MiB));
    const shared = [0, 1].map((i) => chunkKey(bytesA.subarray(i * MiB, (i + 1) * MiB)));
    const manifestA = `del/manifests/${va}.json`;

    const ovDir = tmp.file('overlays');
    mkdirSync(ovDir);
    writeFileSync(tmp.file('overlays/notes.txt'), 'not an image\n');
    mustSucceed(await cownbd(s3, ['create', '-f', 'cow', '-b', `s3://golden/del@${va}`, tmp.file('overlays/vm1.cow'), '--cache-dir', tmp.file('cache')]));

    const noVersion = await cownbd(s3, ['delete', 's3://golden/del']);
    expect(noVersion.code).toBe(1);
    expect(noVersion.stderr).toContain('s3://golden/del: name the version to delete');

    const unknown = await cownbd(s3, ['delete', 's3://golden/del@20200101T000000.000Z-00000000']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('s3://golden/del@20200101T000000.000Z-00000000: no such version');

    const pinned = await cownbd(s3, ['delete', `s3://golden/del@${va}`, '--overlays', ovDir, '--cache-dir', tmp.file('cache')]);
    expect(pinned.code, pinned.stderr + pinned.stdout).toBe(2);
    expect(pinned.stderr).toContain(`s3://golden/del@${va} not deleted: pinned by 1 overlay(s)`);
    expect(pinned.stderr).toContain('vm1.cow');
    expect(s3.object('golden', manifestA)).toBeDefined();

    // An overlay that cannot be inspected (here torn: a cow header cut short) might pin it: refused too, not "no pin".
    const torn = tmp.file('overlays/torn.cow');
    writeFileSync(torn, readFileSync(tmp.file('overlays/vm1.cow')).subarray(0, 64));
    const unreadable = await cownbd(s3, ['delete', `s3://golden/del@${va}`, '--overlays', ovDir, '--cache-dir', tmp.file('cache')]);
    expect(unreadable.code, unreadable.stderr).toBe(1);
    expect(unreadable.stderr).toMatch(/not deleted: could not check .*torn\.cow/);
    expect(s3.object('golden', manifestA)).toBeDefined();

    // --force: deleted although pinned (the result names the overlays).
    const forced = await cownbd(s3, ['delete', `s3://golden/del@${va}`, '--overlays', ovDir, '--cache-dir', tmp.file('cache'), '--force', '--json']);
    expect(forced.code, forced.stderr).toBe(0);
    const doc = JSON.parse(forced.stdout) as { deleted: string; remaining: string[]; pinnedBy: string[] };
    expect(doc.deleted).toBe(`s3://golden/del@${va}`);
    expect(doc.remaining).toEqual([vb]);
    expect(doc.pinnedBy.map((p) => p.split('/').pop())).toEqual(['vm1.cow']);
    expect(s3.object('golden', manifestA)).toBeUndefined();
    const info = JSON.parse(mustSucceed(await cownbd(s3, ['info', 's3://golden/del', '--json'])).stdout) as { versions: string[]; version: string };
    expect(info.versions).toEqual([vb]);

    // gc: A's own chunk is unreferenced now; the chunks B shares stay; B is whole.
    const gc = JSON.parse(mustSucceed(await cownbd(s3, ['gc', 's3://golden', '--grace', '0s', '--delete', '--json'])).stdout) as { unreferenced: Array<{ key: string }> };
    expect(gc.unreferenced.map((x) => x.key)).toEqual([onlyA]);
    expect(s3.object('golden', onlyA)).toBeUndefined();
    for (const k of shared) expect(s3.object('golden', k)).toBeDefined();
    expect((await cownbd(s3, ['fsck', 's3://golden/del'])).code).toBe(0);
  });
});
