/**
 * Small JSON objects that several servers update with the store's conditional PUTs (the
 * lease and the machine head, docs/fleet.md): read one with its ETag, write one only if it
 * is still what we read (or absent), and know whether a refused write was in fact ours.
 *
 * Why the read-back: a conditional PUT whose reply was lost is retried (store-client.ts);
 * the retry meets the object the first attempt wrote and gets 412. Every body carries a
 * random nonce, so equal bytes prove the stored object is our write — and a different body
 * proves it is not. Without this a server would give up a lease it holds.
 */
import { PreconditionFailedError, type PutCondition, type StoreClient } from '../objectstore/store-client.js';

export interface StoredObject<T> {
  readonly value: T;
  readonly etag: string;
}

/** The object decoded by `decode` (which names the field that is wrong), or undefined if absent. */
export async function readObject<T>(client: StoreClient, bucket: string, key: string, decode: (bytes: Buffer, where: string) => T): Promise<StoredObject<T> | undefined> {
  const got = await client.getWithEtag(bucket, key);
  if (!got) return undefined;
  return { value: decode(got.body, `s3://${bucket}/${key}`), etag: got.etag };
}

/**
 * PUT `bytes` if `cond` holds; returns the new ETag. Throws PreconditionFailedError when
 * the store holds someone else's object (or none, for If-Match).
 */
export async function writeObject(client: StoreClient, bucket: string, key: string, bytes: Buffer, cond: PutCondition): Promise<string> {
  try {
    return await client.putConditional(bucket, key, bytes, cond);
  } catch (err) {
    if (!(err instanceof PreconditionFailedError)) throw err;
    const now = await client.getWithEtag(bucket, key);
    if (now && now.body.equals(bytes)) return now.etag; // our own earlier attempt succeeded
    throw err;
  }
}
