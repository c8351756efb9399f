/**
 * Test helper: the object-store guarantees docs/fleet.md relies on, added in front of
 * s3rver (which has none of them) as a Koa middleware of the test S3 server (s3-server.ts):
 *
 *   - conditional PUT: `If-None-Match: *` (only if absent) and `If-Match: "ETAG"` (only if
 *     the stored object has that ETag), answered 412 PreconditionFailed like AWS S3 (404
 *     NoSuchKey for If-Match on a missing key, as AWS does);
 *   - every request on one key is serialised (a queue per key): a condition checked and
 *     the write it guards are one step, and a GET never sees an object half-written
 *     (s3rver writes the object, its md5 and metadata as separate files);
 *   - a PUT is all or nothing: the body is read whole first and given to s3rver only if it
 *     has its Content-Length — s3rver alone stores a torn object when the client dies
 *     mid-body (a server killed by the kill tests), which AWS S3 never does.
 */
import { Readable } from 'node:stream';
import type { IncomingMessage, ServerResponse } from 'node:http';

interface KoaCtx {
  method: string;
  path: string;
  querystring: string;
  status: number;
  body: unknown;
  req: IncomingMessage;
  res: ServerResponse;
  request: { req: IncomingMessage };
  response: { req: IncomingMessage };
  get(field: string): string;
  set(field: string, value: string): void;
  store: { getMetadata(bucket: string, key: string): Promise<{ etag: string }> };
}

function s3Error(ctx: KoaCtx, status: number, code: string, message: string): void {
  ctx.status = status;
  ctx.set('Content-Type', 'application/xml');
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message><RequestId>cond</RequestId></Error>`;
}

/** The whole request body, or undefined if the client went away before sending it all. */
function readWhole(req: IncomingMessage): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    req.on('data', (p: Buffer) => parts.push(p));
    req.on('error', () => resolve(undefined));
    req.on('aborted', () => resolve(undefined));
    req.on('close', () => resolve(undefined)); // after 'end' this changes nothing
    req.on('end', () => resolve(req.complete ? Buffer.concat(parts) : undefined));
  });
}

/** A stand-in for the request whose body was already read: same headers and URL, the bytes again. */
function replay(req: IncomingMessage, body: Buffer): IncomingMessage {
  const r = Readable.from([body]) as unknown as IncomingMessage & Record<string, unknown>;
  for (const k of ['headers', 'rawHeaders', 'method', 'url', 'socket', 'connection', 'httpVersion', 'httpVersionMajor', 'httpVersionMinor', 'trailers', 'complete'] as const) {
    Object.defineProperty(r, k, { value: (req as unknown as Record<string, unknown>)[k], configurable: true, writable: true });
  }
  return r;
}

export function conditionalWrites(): (ctx: KoaCtx, next: () => Promise<void>) => Promise<void> {
  // Per key: the tail of its queue. Kept per server instance (closure), not per module.
  const queues = new Map<string, Promise<void>>();
  return async (ctx, next) => {
    const [, bucket = '', ...rest] = ctx.path.split('/');
    const key = decodeURIComponent(rest.join('/'));
    // Bucket operations and sub-resources (multipart, tagging): as s3rver does them. The SDK
    // adds x-id=PutObject / GetObject to plain object requests.
    const query = new URLSearchParams(ctx.querystring);
    query.delete('x-id');
    if (key === '' || [...query.keys()].length > 0) return next();
    const id = `${bucket}/${key}`;
    const before = queues.get(id) ?? Promise.resolve();
    let done!: () => void;
    const mine = new Promise<void>((r) => (done = r));
    const tail = before.then(() => mine);
    queues.set(id, tail);
    let keep = false;
    const release = (): void => {
      done();
      if (queues.get(id) === tail) queues.delete(id);
    };
    try {
      if (ctx.method === 'PUT') {
        // Read the body before waiting for the key: a slow upload must not hold the queue.
        const body = await readWhole(ctx.req);
        const want = Number(ctx.get('content-length'));
        await before;
        if (body === undefined || (ctx.get('content-length') !== '' && body.length !== want)) {
          return s3Error(ctx, 400, 'IncompleteBody', 'You did not provide the number of bytes specified by the Content-Length HTTP header');
        }
        const ifNoneMatch = ctx.get('if-none-match');
        const ifMatch = ctx.get('if-match');
        if (ifNoneMatch !== '' || ifMatch !== '') {
          const etag = await ctx.store.getMetadata(bucket, key).then(
            (m) => m.etag,
            () => undefined,
          );
          if (ifNoneMatch !== '' && (ifNoneMatch !== '*' || etag !== undefined)) {
            return s3Error(ctx, 412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold');
          }
          if (ifMatch !== '') {
            if (etag === undefined) return s3Error(ctx, 404, 'NoSuchKey', 'The specified key does not exist.');
            if (etag !== ifMatch && etag !== `"${ifMatch.replace(/"/g, '')}"`) {
              return s3Error(ctx, 412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold');
            }
          }
        }
        const again = replay(ctx.req, body);
        ctx.req = again;
        ctx.request.req = again;
        ctx.response.req = again;
        return await next();
      }
      await before;
      // A GET's body is streamed after the middleware returns: the key stays ours until the
      // answer is written (or the client went away), so no PUT truncates the file under it.
      ctx.res.once('close', release);
      keep = true;
      return await next();
    } finally {
      if (!keep) release();
    }
  };
}
