/**
 * The store's conditional writes (docs/fleet.md, "What the store must support") through
 * our StoreClient, against both test S3 servers: s3rver behind our conditional middleware
 * (helpers/s3-conditional.ts) and the fault-injecting server. If-None-Match: * creates
 * once; If-Match: ETAG replaces only the object read; a failed condition is
 * PreconditionFailedError and changes nothing; racing writers of one key: exactly one wins.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PreconditionFailedError, type StoreClient } from '../../src/objectstore/store-client.js';
import { writeObject } from '../../src/fleet/conditional-object.js';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { testClient } from './fleet-store.js';

const servers: Array<[string, () => Promise<S3TestServer | FaultS3Server>]> = [
  ['s3rver + conditional middleware', () => startS3Server()],
  ['fault-injecting server', () => startFaultS3Server()],
];

describe.each(servers)('conditional PUT on the %s', (_name, start) => {
  let s3: S3TestServer | FaultS3Server;
  let client: StoreClient;
  beforeAll(async () => {
    s3 = await start();
    client = testClient(s3.endpoint);
  });
  afterAll(async () => {
    client?.close();
    await s3?.close();
  });

  it('If-None-Match: * creates once, then refuses with 412 and keeps the first object', async () => {
    const etag = await client.putConditional('golden', 'c/one', Buffer.from('first'), { ifNoneMatch: '*' });
    expect(etag).toMatch(/^"[0-9a-f]{32}"$/);
    await expect(client.putConditional('golden', 'c/one', Buffer.from('second'), { ifNoneMatch: '*' })).rejects.toThrow(PreconditionFailedError);
    await expect(client.putConditional('golden', 'c/one', Buffer.from('second'), { ifNoneMatch: '*' })).rejects.toThrow(/c\/one: exists already/);
    const got = await client.getWithEtag('golden', 'c/one');
    expect(got?.body.toString()).toBe('first');
    expect(got?.etag).toBe(etag);
  });

  it('If-Match replaces only the object read; a stale ETag gets 412 and changes nothing', async () => {
    const e1 = await client.putConditional('golden', 'c/two', Buffer.from('v1'), { ifNoneMatch: '*' });
    const e2 = await client.putConditional('golden', 'c/two', Buffer.from('v2'), { ifMatch: e1 });
    expect(e2).not.toBe(e1);
    await expect(client.putConditional('golden', 'c/two', Buffer.from('v3 from a stale writer'), { ifMatch: e1 })).rejects.toThrow(PreconditionFailedError);
    expect((await client.getWithEtag('golden', 'c/two'))?.body.toString()).toBe('v2');
    const e3 = await client.putConditional('golden', 'c/two', Buffer.from('v3'), { ifMatch: e2 });
    expect((await client.getWithEtag('golden', 'c/two'))).toEqual({ body: Buffer.from('v3'), etag: e3 });
  });

  it('If-Match on a missing key fails the condition (AWS answers 404)', async () => {
    await expect(client.putConditional('golden', 'c/absent', Buffer.from('x'), { ifMatch: '"00000000000000000000000000000000"' })).rejects.toThrow(PreconditionFailedError);
    expect(await client.getWithEtag('golden', 'c/absent')).toBeUndefined();
  });

  it('racing writers: of 8 creates exactly one wins; of 8 replaces of one ETag exactly one wins', async () => {
    const creates = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => client.putConditional('golden', 'c/race', Buffer.from(`w${i}`), { ifNoneMatch: '*' })));
    expect(creates.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of creates) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(PreconditionFailedError);
    const cur = (await client.getWithEtag('golden', 'c/race'))!;
    const replaces = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => client.putConditional('golden', 'c/race', Buffer.from(`r${i}`), { ifMatch: cur.etag })));
    const won = replaces.findIndex((r) => r.status === 'fulfilled');
    expect(replaces.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect((await client.getWithEtag('golden', 'c/race'))?.body.toString()).toBe(`r${won}`);
  });

  it('writeObject recognises its own earlier success behind a 412, and refuses another writer\'s object', async () => {
    const bytes = Buffer.from('{"nonce":"abc"}');
    const e1 = await client.putConditional('golden', 'c/mine', bytes, { ifNoneMatch: '*' });
    // As a retried attempt would: the same bytes, the condition now fails, the object is ours.
    expect(await writeObject(client, 'golden', 'c/mine', bytes, { ifNoneMatch: '*' })).toBe(e1);
    await expect(writeObject(client, 'golden', 'c/mine', Buffer.from('{"nonce":"other"}'), { ifNoneMatch: '*' })).rejects.toThrow(PreconditionFailedError);
  });
});

describe('s3rver behind the conditional middleware: a PUT is all or nothing', () => {
  let s3: S3TestServer;
  let client: StoreClient;
  beforeAll(async () => {
    s3 = await startS3Server();
    client = testClient(s3.endpoint);
  });
  afterAll(async () => {
    client?.close();
    await s3?.close();
  });

  it('a client that dies mid-body leaves no object (s3rver alone keeps the torn half)', async () => {
    const old = Buffer.alloc(4096, 0x11);
    await client.put('golden', 'c/torn', old);
    // An unsigned PUT (s3rver lets anonymous requests through) whose client dies halfway.
    await new Promise<void>((resolve, reject) => {
      const sock = connect(s3.port, '127.0.0.1', () => {
        sock.write(`PUT /golden/c/torn HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 8192\r\nContent-Type: application/octet-stream\r\n\r\n`);
        sock.write(Buffer.alloc(4096, 0x22), () => setTimeout(() => (sock.resetAndDestroy(), resolve()), 200));
      });
      sock.on('error', reject);
    });
    await new Promise((r) => setTimeout(r, 300));
    expect((await client.getWithEtag('golden', 'c/torn'))?.body.equals(old)).toBe(true);
  });
});
