/**
 * A store that answers 403 to HEAD (credentials without s3:GetObject, or without
 * s3:ListBucket for a missing object, docs/object-store.md "Permissions") is named as
 * such — "HTTP 403 access denied … lack a permission" — by the commands that HEAD: publish
 * and delete; asked once (a 403 is an answer, not retried); nothing written or deleted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { cownbd, MiB, publish } from './s3-helpers.js';

describe('403 to HEAD', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  beforeAll(async () => {
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-403-');
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('publish and delete say "access denied" and point at the permissions, after one request', async () => {
    const img = createRawImage(tmp.file('p.raw'), MiB, [[0, MiB]], 5);
    const { version } = await publish(s3, img, 's3://golden/perm');
    const forbidden = { key: /./, method: 'HEAD', fault: { kind: 'status', status: 403 }, times: Infinity } as const;

    s3.inject(forbidden);
    s3.requests.length = 0;
    const p = await cownbd(s3, ['publish', img, 's3://golden/perm', '-j', '1']);
    expect(p.code).toBe(1);
    expect(p.stderr).toMatch(/HEAD s3:\/\/golden\/cownbd-chunks\/sha256\/[0-9a-f]{64} .*HTTP 403 access denied .*lack a permission .*"Permissions"/);
    expect(p.stderr).not.toContain('UnknownError');
    expect(s3.requests.filter((r) => r.method === 'HEAD')).toHaveLength(1);
    expect(s3.requests.filter((r) => r.method === 'PUT')).toHaveLength(0);

    const d = await cownbd(s3, ['delete', `s3://golden/perm@${version}`]);
    expect(d.code).toBe(1);
    expect(d.stderr).toMatch(/HEAD s3:\/\/golden\/perm\/manifests\/.*HTTP 403 access denied/);
    expect(s3.requests.filter((r) => r.method === 'DELETE')).toHaveLength(0);
    s3.clearFaults();
    expect(s3.object('golden', `perm/manifests/${version}.json`)).toBeDefined();
  });
});
