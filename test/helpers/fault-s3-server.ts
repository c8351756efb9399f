/**
 * Test helper: a small S3-compatible server (in this test process, plain Node http on
 * 127.0.0.1) that injects the faults real stores produce, per request.
 *
 *   const s3 = await startFaultS3Server();                 // bucket "golden", in memory
 *   s3.inject({ key: /abc$/, fault: { kind: 'status', status: 503 }, times: 1 });
 *   s3.requests            → every request: method, key, the fault it got
 *   await s3.stop(); await s3.start();                     // outage, same port, same data
 *
 * Enough of the S3 REST API for cownbd's client (path-style): GET/HEAD/PUT/DELETE object,
 * ListObjectsV2 (with each object's LastModified, which `backdate` moves), conditional PUT
 * (If-None-Match: * / If-Match: ETAG → 412). Signatures are not checked (the SDK signs with S3_ENV's keys).
 *
 * Faults (each on the matching GET/HEAD/PUT, `times` requests, Infinity = always):
 *   status   answer with an S3 error (500, 503, 403, 404 for a key that exists)
 *   reset    headers and half the body, then a TCP reset
 *   short    headers with the right Content-Length, half the body, then a clean close
 *   flip     the whole body with one bit flipped
 *   other    another object's bytes (and its length)
 *   delay    nothing at all for `ms`, then the right answer (a PUT: stored then, and answered)
 *   trickle  the right answer at `bytesPerSecond`
 * s3rver (s3-server.ts) stays the happy-path store; this one is for what goes wrong.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { Socket } from 'node:net';
import type { S3Stats } from './s3-server.js';

export type Fault =
  | { kind: 'status'; status: number }
  | { kind: 'reset' }
  | { kind: 'short' }
  | { kind: 'flip' }
  | { kind: 'other' }
  | { kind: 'delay'; ms: number }
  | { kind: 'trickle'; bytesPerSecond: number };

export interface FaultRule {
  readonly key: string | RegExp;
  readonly method?: string;
  readonly fault: Fault;
  /** How many matching requests get the fault (Infinity: always). */
  times: number;
  /** How many got it so far. */
  hits: number;
}

export interface RequestRecord {
  readonly method: string;
  readonly bucket: string;
  readonly key: string;
  readonly fault?: Fault['kind'];
}

export interface FaultS3Server {
  readonly endpoint: string;
  readonly port: number;
  /** CLI flags pointing cownbd at this server. */
  readonly flags: string[];
  readonly requests: RequestRecord[];
  /** Same shape as s3rver's accounting (s3-server.ts), for shared helpers. */
  readonly stats: S3Stats;
  inject(rule: Omit<FaultRule, 'hits'>): FaultRule;
  clearFaults(): void;
  /** GETs of `key` so far (faulted or not). */
  getsOf(key: string): number;
  object(bucket: string, key: string): Buffer | undefined;
  /** Replace an object's bytes behind the client's back (damage in the bucket). */
  putObject(bucket: string, key: string, data: Buffer): void;
  deleteObject(bucket: string, key: string): void;
  /** Make an object look `ms` older (LastModified), for gc's grace period. */
  backdate(bucket: string, key: string, ms: number): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  close(): Promise<void>;
}

export async function startFaultS3Server(buckets: string[] = ['golden']): Promise<FaultS3Server> {
  const store = new Map<string, Map<string, Buffer>>(buckets.map((b) => [b, new Map()]));
  const rules: FaultRule[] = [];
  const modified = new Map<string, number>(); // "bucket/key" → LastModified (ms)
  const requests: RequestRecord[] = [];
  const stats: S3Stats = { requests: 0, chunkGets: 0, chunkGetBytes: 0, heads: 0, puts: 0, chunkKeys: [] };
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let port = 0;
  let server: http.Server | undefined;

  const later = (ms: number, fn: () => void): void => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };

  const pick = (method: string, key: string): Fault | undefined => {
    const rule = rules.find(
      (r) => r.hits < r.times && (r.method ?? 'GET') === method && (typeof r.key === 'string' ? r.key === key : r.key.test(key)),
    );
    if (!rule) return undefined;
    rule.hits++;
    return rule.fault;
  };

  const sendError = (res: http.ServerResponse, status: number, code: string, head: boolean): void => {
    const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${code}</Message><RequestId>fault</RequestId></Error>`;
    res.writeHead(status, { 'Content-Type': 'application/xml', 'Content-Length': head ? 0 : Buffer.byteLength(body) });
    res.end(head ? undefined : body);
  };

  const codeOf = (status: number): string =>
    ({ 403: 'AccessDenied', 404: 'NoSuchKey', 412: 'PreconditionFailed', 500: 'InternalError', 503: 'SlowDown' } as Record<number, string>)[status] ?? 'InternalError';

  const objectHeaders = (data: Buffer): http.OutgoingHttpHeaders => ({
    'Content-Type': 'application/octet-stream',
    'Content-Length': data.length,
    ETag: `"${createHash('md5').update(data).digest('hex')}"`,
    'Last-Modified': new Date(0).toUTCString(),
  });

  const serveObject = (req: http.IncomingMessage, res: http.ServerResponse, bucket: string, key: string, data: Buffer, fault: Fault | undefined): void => {
    const head = req.method === 'HEAD';
    if (!fault) {
      res.writeHead(200, objectHeaders(data));
      res.end(head ? undefined : data);
      return;
    }
    switch (fault.kind) {
      case 'status':
        return sendError(res, fault.status, codeOf(fault.status), head);
      case 'reset':
        res.writeHead(200, objectHeaders(data));
        res.write(data.subarray(0, data.length >> 1), () => res.socket?.resetAndDestroy());
        return;
      case 'short':
        res.writeHead(200, objectHeaders(data));
        res.write(data.subarray(0, data.length >> 1), () => res.socket?.end());
        return;
      case 'flip': {
        const bad = Buffer.from(data);
        bad[bad.length >> 1]! ^= 0x10;
        res.writeHead(200, objectHeaders(bad));
        res.end(head ? undefined : bad);
        return;
      }
      case 'other': {
        const objects = store.get(bucket)!;
        const other = [...objects.entries()].find(([k, v]) => k !== key && !v.equals(data))?.[1] ?? Buffer.alloc(data.length, 0xa5);
        res.writeHead(200, objectHeaders(other));
        res.end(head ? undefined : other);
        return;
      }
      case 'delay':
        later(fault.ms, () => {
          if (res.destroyed || res.socket?.destroyed) return;
          serveObject(req, res, bucket, key, data, undefined);
        });
        return;
      case 'trickle': {
        res.writeHead(200, objectHeaders(data));
        const step = Math.max(1, Math.floor(fault.bytesPerSecond / 16));
        let pos = 0;
        const tick = (): void => {
          if (res.destroyed || res.socket?.destroyed) return;
          const part = data.subarray(pos, pos + step);
          pos += part.length;
          if (pos >= data.length) res.end(part);
          else {
            res.write(part);
            later(1000 / 16, tick);
          }
        };
        tick();
        return;
      }
    }
  };

  const list = (res: http.ServerResponse, bucket: string, url: URL): void => {
    const prefix = url.searchParams.get('prefix') ?? '';
    const keys = [...store.get(bucket)!.entries()].filter(([k]) => k.startsWith(prefix)).sort(([a], [b]) => (a < b ? -1 : 1));
    const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    const body =
      `<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
      `<Name>${esc(bucket)}</Name><Prefix>${esc(prefix)}</Prefix><KeyCount>${keys.length}</KeyCount><MaxKeys>100000</MaxKeys><IsTruncated>false</IsTruncated>` +
      keys.map(([k, v]) => `<Contents><Key>${esc(k)}</Key><LastModified>${new Date(modified.get(`${bucket}/${k}`) ?? 0).toISOString()}</LastModified><Size>${v.length}</Size><StorageClass>STANDARD</StorageClass></Contents>`).join('') +
      `</ListBucketResult>`;
    res.writeHead(200, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };

  /** A PUT, conditional ones as AWS S3 answers them (docs/fleet.md); one request at a time here. */
  const storePut = (res: http.ServerResponse, objects: Map<string, Buffer>, bucket: string, key: string, body: Buffer, headers: http.IncomingHttpHeaders): void => {
    const current = objects.get(key);
    const etag = current && `"${createHash('md5').update(current).digest('hex')}"`;
    const ifNoneMatch = headers['if-none-match'];
    const ifMatch = headers['if-match'];
    if (ifNoneMatch !== undefined && (ifNoneMatch !== '*' || current)) return sendError(res, 412, 'PreconditionFailed', false);
    if (ifMatch !== undefined && !current) return sendError(res, 404, 'NoSuchKey', false);
    if (ifMatch !== undefined && ifMatch !== etag) return sendError(res, 412, 'PreconditionFailed', false);
    objects.set(key, body);
    modified.set(`${bucket}/${key}`, Date.now());
    res.writeHead(200, { ETag: `"${createHash('md5').update(body).digest('hex')}"`, 'Content-Length': 0 });
    res.end();
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): void => {
    const url = new URL(req.url ?? '/', 'http://x');
    const [, bucket = '', ...rest] = url.pathname.split('/');
    const key = decodeURIComponent(rest.join('/'));
    const method = req.method ?? 'GET';
    const objects = store.get(bucket);
    stats.requests++;
    if (!objects) return sendError(res, 404, 'NoSuchBucket', method === 'HEAD');
    if (method === 'GET' && key === '' && url.searchParams.get('list-type') === '2') return list(res, bucket, url);
    const fault = key ? pick(method, key) : undefined;
    requests.push({ method, bucket, key, ...(fault ? { fault: fault.kind } : {}) });
    if (method === 'PUT') {
      stats.puts++;
      if (fault?.kind === 'status') return sendError(res, fault.status, codeOf(fault.status), false);
      // A slow store: the PUT takes effect (conditions checked then) and is answered after `ms`.
      if (fault?.kind === 'delay') return later(fault.ms, () => !res.destroyed && storePut(res, objects, bucket, key, body, req.headers));
      return storePut(res, objects, bucket, key, body, req.headers);
    }
    if (method === 'DELETE') {
      objects.delete(key);
      res.writeHead(204);
      res.end();
      return;
    }
    if (method !== 'GET' && method !== 'HEAD') return sendError(res, 501, 'NotImplemented', false);
    if (method === 'HEAD') stats.heads++;
    const data = objects.get(key);
    if (!data) return sendError(res, 404, 'NoSuchKey', method === 'HEAD');
    if (method === 'GET' && key.startsWith('cownbd-chunks/') && !fault) {
      stats.chunkGets++;
      stats.chunkGetBytes += data.length;
      stats.chunkKeys.push(key);
    }
    serveObject(req, res, bucket, key, data, fault);
  };

  const start = async (): Promise<void> => {
    if (server) return;
    const s = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (p: Buffer) => parts.push(p));
      req.on('end', () => handle(req, res, Buffer.concat(parts)));
    });
    s.on('connection', (sock) => {
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => resolve());
    });
    port = (s.address() as { port: number }).port;
    server = s;
  };

  const stop = async (): Promise<void> => {
    const s = server;
    server = undefined;
    if (!s) return;
    for (const t of timers) clearTimeout(t);
    timers.clear();
    // Like a crash: every connection goes now.
    for (const sock of sockets) sock.destroy();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  };

  await start();
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    port,
    flags: ['--s3-endpoint', endpoint],
    requests,
    stats,
    inject(rule) {
      const r: FaultRule = { ...rule, hits: 0 };
      rules.push(r);
      return r;
    },
    clearFaults() {
      rules.length = 0;
    },
    getsOf(key) {
      return requests.filter((r) => r.method === 'GET' && r.key === key).length;
    },
    object(bucket, key) {
      return store.get(bucket)?.get(key);
    },
    putObject(bucket, key, data) {
      store.get(bucket)!.set(key, data);
      modified.set(`${bucket}/${key}`, Date.now());
    },
    backdate(bucket, key, ms) {
      modified.set(`${bucket}/${key}`, (modified.get(`${bucket}/${key}`) ?? Date.now()) - ms);
    },
    deleteObject(bucket, key) {
      store.get(bucket)!.delete(key);
    },
    start,
    stop,
    close: stop,
  };
}
