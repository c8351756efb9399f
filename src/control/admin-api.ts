/**
 * The admin API: HTTP/JSON (fastify) on a Unix socket (mode 0600: file permissions are
 * the access control) or on TCP with a bearer token read from a file.
 *
 *   GET    /exports                     every export: kind, chain, bytes per layer, connections
 *   GET    /exports/:name               one export
 *   GET    /exports/:name/allocation    top-layer map (?buckets=N) for the status page
 *   GET    /connections                 every client: export, peer, since, bytes, in flight
 *   POST   /reload                      re-read the config file (like SIGHUP)
 *   POST   /exports/:name/snapshot      freeze the top overlay, stack a new one (live)
 *   POST   /exports/:name/compact       merge the oldest snapshot layers (?keep=N, default 1;
 *                                        ?force=true disconnects: not live, like reset)
 *   POST   /exports/:name/reset         pristine top overlay (?force=true disconnects)
 *   DELETE /exports/:name               delete a per-machine overlay (?force=true)
 *   GET    /metrics                     Prometheus text format
 *   GET    /                            status page
 *
 * Every failure is a JSON body {"error": "..."} with a 4xx status naming the problem
 * (500 only for a bug, logged); a handler error never reaches the NBD server.
 *
 * Hostile callers (docs/security.md "Admin API"): web pages are kept out by
 * request-guard.ts (Host, Origin, Content-Type); half-sent requests time out and
 * connections are bounded (ADMIN_LIMITS); a flood is answered 429 (rate-limit.ts) so it
 * cannot take the event loop from the NBD clients; the Unix socket is never reachable
 * with a wider mode than 0600 (unix-listen.ts).
 */
import { timingSafeEqual } from 'node:crypto';
import { unlink } from 'node:fs/promises';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from '../logging.js';
import type { AdminEndpoint } from './endpoint.js';
import { ApiError, type Operations } from './operations.js';
import { TokenBucket } from './rate-limit.js';
import type { ReloadResult } from './reload.js';
import { crossSiteProblem, hostProblem, type RequestFacts } from './request-guard.js';
import { listenUnixPrivately } from './unix-listen.js';

/** Bounds on what one admin client can hold (docs/security.md "Admin API"). */
export const ADMIN_LIMITS = {
  /** The request line and headers must arrive within this. */
  headersTimeoutMs: 5_000,
  /** The whole request (headers and body) must arrive within this. */
  requestTimeoutMs: 10_000,
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: 5_000,
  /** How often Node checks the two timeouts above (its default, 30 s, would let them overrun). */
  checkIntervalMs: 500,
  /** A socket silent for this long is closed, even mid-request (longer than any handler). */
  idleTimeoutMs: 120_000,
  /** Connections beyond this are closed as they arrive. */
  maxConnections: 64,
  /** No endpoint takes a body; a JSON one must still fit. */
  bodyLimit: 4096,
  /** Requests per second (sustained) and at once, for all clients together. */
  ratePerSecond: 100,
  rateBurst: 200,
} as const;

export interface AdminApiOptions {
  readonly endpoint: AdminEndpoint;
  /** Required bearer token (TCP); undefined for a Unix socket. */
  readonly token?: string;
  readonly ops: Operations;
  readonly reload: () => Promise<ReloadResult>;
  readonly snapshot?: (name: string) => Promise<unknown>;
  /** Extra routes (metrics, status page) registered by their own modules. */
  readonly plugins?: ReadonlyArray<(app: FastifyInstance) => void>;
  readonly log: Logger;
}

export interface AdminApi {
  /** "unix:/path" or "http://host:port" */
  readonly address: string;
  close(): Promise<void>;
}

type NameParams = { Params: { name: string }; Querystring: Record<string, string | undefined> };

export function buildAdminApp(o: AdminApiOptions): FastifyInstance {
  const L = ADMIN_LIMITS;
  const app = Fastify({
    logger: false,
    return503OnClosing: true,
    bodyLimit: L.bodyLimit,
    connectionTimeout: L.idleTimeoutMs,
    keepAliveTimeout: L.keepAliveTimeoutMs,
    requestTimeout: L.requestTimeoutMs,
    http: { headersTimeout: L.headersTimeoutMs, requestTimeout: L.requestTimeoutMs, connectionsCheckingInterval: L.checkIntervalMs },
  });
  app.server.maxConnections = L.maxConnections;
  addGuards(app, o);
  app.addHook('onResponse', async (req, reply) => {
    o.log.debug({ method: req.method, url: req.url, status: reply.statusCode }, 'admin request');
  });
  app.setErrorHandler((err: Error & { statusCode?: number }, req, reply) => {
    if (err instanceof ApiError) return reply.status(err.status).send({ error: err.message });
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) return reply.status(err.statusCode).send({ error: err.message });
    o.log.error({ err, method: req.method, url: req.url }, 'admin API request failed');
    return reply.status(500).send({ error: `internal error: ${err.message}` });
  });
  app.setNotFoundHandler((req, reply) => reply.status(404).send({ error: `no such endpoint: ${req.method} ${req.url.split('?')[0]}` }));

  app.get('/exports', async () => ({ exports: await o.ops.exports() }));
  app.get<NameParams>('/exports/:name', async (req) => o.ops.exportView(req.params.name));
  app.get<NameParams>('/exports/:name/allocation', async (req) => {
    const buckets = intParam(req.query.buckets, 'buckets', 256, 1, 4096);
    return o.ops.allocation(req.params.name, buckets);
  });
  app.get('/connections', async () => ({ connections: o.ops.connections() }));
  app.post('/reload', async () => {
    try {
      return await o.reload();
    } catch (err) {
      throw new ApiError(422, `reload failed, configuration unchanged: ${(err as Error).message}`);
    }
  });
  app.post<NameParams>('/exports/:name/reset', async (req) => ({ export: req.params.name, ...(await o.ops.reset(req.params.name, forceParam(req))) }));
  app.delete<NameParams>('/exports/:name', async (req) => ({ export: req.params.name, ...(await o.ops.remove(req.params.name, forceParam(req))) }));
  app.post<NameParams>('/exports/:name/snapshot', async (req, reply: FastifyReply) => {
    if (!o.snapshot) throw new ApiError(501, 'snapshots are not available');
    const result = await o.snapshot(req.params.name);
    return reply.status(201).send(result);
  });
  app.post<NameParams>('/exports/:name/compact', async (req) => {
    const keep = intParam(req.query.keep, 'keep', 1, 1, 62);
    return o.ops.compact(req.params.name, keep, forceParam(req));
  });
  for (const plugin of o.plugins ?? []) plugin(app);
  return app;
}

/** Before any route: the rate limit, the browser checks (request-guard.ts), the token. */
function addGuards(app: FastifyInstance, o: AdminApiOptions): void {
  const L = ADMIN_LIMITS;
  const bucket = new TokenBucket(L.ratePerSecond, L.rateBurst);
  app.addHook('onRequest', async (_req, reply) => {
    if (!bucket.take()) {
      reply.header('retry-after', String(bucket.retryAfterSeconds()));
      throw new ApiError(429, `too many admin requests (more than ${L.ratePerSecond} a second): slow down`);
    }
  });
  const configuredHost = 'host' in o.endpoint ? o.endpoint.host : undefined;
  app.addHook('onRequest', async (req) => {
    const h = req.headers;
    const facts: RequestFacts = { method: req.method, host: h.host, origin: h.origin, referer: h.referer, contentType: h['content-type'] };
    // With a token a rebound page cannot authenticate; without one, Host is the only proof.
    const problem = (o.token === undefined ? hostProblem(facts, configuredHost) : undefined) ?? crossSiteProblem(facts);
    if (problem) throw new ApiError(403, problem);
  });
  if (o.token !== undefined) {
    const expected = Buffer.from(`Bearer ${o.token}`);
    app.addHook('onRequest', async (req, reply) => {
      // The status page holds no data (its script sends the token with each API call).
      if (req.method === 'GET' && req.url.split('?')[0] === '/') return;
      const got = Buffer.from(req.headers.authorization ?? '');
      if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
        reply.header('www-authenticate', 'Bearer');
        throw new ApiError(401, 'missing or wrong bearer token (Authorization: Bearer <token from the token file>)');
      }
    });
  }
}

export async function startAdminApi(o: AdminApiOptions): Promise<AdminApi> {
  const app = buildAdminApp(o);
  const e = o.endpoint;
  let address: string;
  if ('path' in e) {
    await listenUnixPrivately(e.path, 0o600, async (temp) => {
      await app.listen({ path: temp });
    });
    address = `unix:${e.path}`;
  } else {
    await app.listen({ host: e.host, port: e.port });
    const a = app.server.address();
    const port = a && typeof a === 'object' ? a.port : e.port;
    address = `http://${e.host.includes(':') ? `[${e.host}]` : e.host}:${port}`;
  }
  return {
    address,
    close: async () => {
      await app.close();
      if ('path' in e) await unlink(e.path).catch(() => {});
    },
  };
}

function forceParam(req: FastifyRequest<NameParams>): boolean {
  const v = req.query.force;
  if (v === undefined || v === 'false' || v === '0') return false;
  if (v === '' || v === 'true' || v === '1') return true;
  throw new ApiError(400, `force must be true or false (got "${v}")`);
}

function intParam(v: string | undefined, name: string, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) throw new ApiError(400, `${name} must be an integer ${min}-${max} (got "${v}")`);
  return n;
}
