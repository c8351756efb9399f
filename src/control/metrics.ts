/**
 * GET /metrics: Prometheus text format via prom-client, one Registry per server (no
 * global registry: several servers may live in one process).
 *
 * Counted as requests finish (the server's request listener):
 *   cownbd_requests_total{export,command}
 *   cownbd_request_errors_total{export,command,errno}
 *   cownbd_read_bytes_total{export}, cownbd_written_bytes_total{export}
 *   cownbd_request_duration_seconds{export,command}   histogram
 * Read at scrape time from the registries:
 *   cownbd_connections{export}, cownbd_requests_in_flight{export}
 *   cownbd_allocated_bytes{export,depth,format}        bytes each layer provides (open
 *                                                      devices only; from the background
 *                                                      figure cache: a scrape never walks
 *                                                      a bitmap itself, operations.ts)
 *   cownbd_allocation_measurements_total               walks the figure cache made
 *   cownbd_exports
 * Plus prom-client's default process/Node metrics (cownbd_process_*, cownbd_nodejs_*).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { FastifyInstance } from 'fastify';
import { NbdCmd, NbdError, nameOf } from '../protocol/constants.js';
import type { NbdServer } from '../server/listener.js';
import { ApiError, type Operations } from './operations.js';
import { TokenBucket } from './rate-limit.js';

/**
 * Scrapes within this long of the previous one get the same text: a scraper gone wild
 * costs at most a few renderings a second (rendering walks every series), never one per
 * request. Far below any Prometheus scrape interval.
 */
const RENDER_REUSE_MS = 100;

/**
 * Scrapes rendered per second (and at once). Rendering runs on the event loop in one go
 * and costs ~40 ms with 100 busy exports (prom-client formats every histogram series),
 * during which no NBD reply leaves; Prometheus scrapes every few seconds, so more than
 * this is a runaway client and gets 429 (the admin API's own, wider limit applies to
 * every request as well).
 */
const SCRAPES_PER_SECOND = 2;
const SCRAPE_BURST = 5;

export interface ServerMetrics {
  readonly registry: Registry;
  /** Fastify plugin: GET /metrics (a closure, registered detached). */
  readonly route: (app: FastifyInstance) => void;
}

/** What the object store and its chunk cache counted so far (src/objectstore/). */
export interface ObjectStoreStats {
  readonly gets: number;
  readonly getBytes: number;
  readonly getErrors: number;
  readonly cacheHits: number;
  readonly cacheMisses: number;
  readonly cacheBytes: number;
  readonly verifyFailures: number;
}

export function createMetrics(server: NbdServer, ops: Operations, objectStore?: () => ObjectStoreStats | undefined): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'cownbd_' });
  countRequests(server, registry);
  addStateGauges(registry, ops);
  if (objectStore) addObjectStoreGauges(registry, objectStore);
  // Rendered once as bytes: sending a Buffer skips a UTF-8 encoding per answer.
  let last: { at: number; text: Promise<Buffer> } | undefined;
  const scrapes = new TokenBucket(SCRAPES_PER_SECOND, SCRAPE_BURST);
  return {
    registry,
    route(app) {
      app.get('/metrics', async (_req, reply) => {
        if (!scrapes.take()) {
          reply.header('retry-after', String(scrapes.retryAfterSeconds()));
          throw new ApiError(429, `too many scrapes (more than ${SCRAPES_PER_SECOND} a second): slow down`);
        }
        reply.header('content-type', registry.contentType);
        const now = performance.now();
        if (!last || now - last.at > RENDER_REUSE_MS) last = { at: now, text: registry.metrics().then((t) => Buffer.from(t)) };
        const mine = last;
        try {
          return await mine.text;
        } catch (err) {
          if (last === mine) last = undefined; // a failed rendering is not reused
          throw err;
        }
      });
    },
  };
}

/** Counters and the latency histogram, fed by the server's request listener. */
function countRequests(server: NbdServer, registry: Registry): void {
  const requests = new Counter({ name: 'cownbd_requests_total', help: 'NBD requests finished, by export and command', labelNames: ['export', 'command'], registers: [registry] });
  const errors = new Counter({ name: 'cownbd_request_errors_total', help: 'NBD requests answered with an error, by errno', labelNames: ['export', 'command', 'errno'], registers: [registry] });
  const readBytes = new Counter({ name: 'cownbd_read_bytes_total', help: 'Bytes returned by successful READs', labelNames: ['export'], registers: [registry] });
  const writtenBytes = new Counter({ name: 'cownbd_written_bytes_total', help: 'Bytes accepted by successful WRITEs', labelNames: ['export'], registers: [registry] });
  const duration = new Histogram({
    name: 'cownbd_request_duration_seconds',
    help: 'Time from parsing a request to its reply being queued',
    labelNames: ['export', 'command'],
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
    registers: [registry],
  });
  const commandNames = new Map<number, string>(Object.entries(NbdCmd).map(([k, v]) => [v, k.toLowerCase()]));

  server.addRequestListener((conn, cmd, length, startNs, errno) => {
    const exp = conn.exportName ?? '';
    const command = commandNames.get(cmd) ?? `unknown_${cmd}`;
    requests.inc({ export: exp, command });
    if (errno !== 0) {
      errors.inc({ export: exp, command, errno: nameOf(NbdError, errno) });
    } else if (cmd === NbdCmd.READ) readBytes.inc({ export: exp }, length);
    else if (cmd === NbdCmd.WRITE) writtenBytes.inc({ export: exp }, length);
    if (startNs > 0n) duration.observe({ export: exp, command }, Number(process.hrtime.bigint() - startNs) / 1e9);
  });
}

/** Gauges computed when scraped: connections, requests in flight, allocation per layer, exports. */
function addStateGauges(registry: Registry, ops: Operations): void {
  new Gauge({
    name: 'cownbd_connections',
    help: 'Clients in transmission, by export',
    labelNames: ['export'],
    registers: [registry],
    collect() {
      this.reset();
      for (const c of ops.connections()) this.inc({ export: c.export });
    },
  });
  new Gauge({
    name: 'cownbd_requests_in_flight',
    help: 'Requests being processed, by export',
    labelNames: ['export'],
    registers: [registry],
    collect() {
      this.reset();
      for (const c of ops.connections()) this.inc({ export: c.export }, c.inFlight);
    },
  });
  new Gauge({
    name: 'cownbd_allocated_bytes',
    help: 'Bytes of the disk whose data each layer of the chain provides (depth 1 = top overlay)',
    labelNames: ['export', 'depth', 'format'],
    registers: [registry],
    async collect() {
      const rows = await ops.figures.openAllocations();
      this.reset();
      for (const r of rows) this.set({ export: r.export, depth: String(r.depth), format: r.format }, r.bytes);
    },
  });
  new Gauge({
    name: 'cownbd_allocation_measurements_total',
    help: 'Allocation walks made for the admin API and metrics (background cache: not one per request)',
    registers: [registry],
    collect() {
      this.set(ops.figures.walks);
    },
  });
  new Gauge({
    name: 'cownbd_exports',
    help: 'Exports the server offers',
    registers: [registry],
    async collect() {
      this.set((await ops.exportNames()).length);
    },
  });
}

/**
 * Object-store counters, read at scrape time (zero until the first s3:// image is opened):
 *   cownbd_s3_gets, cownbd_s3_get_bytes, cownbd_s3_get_errors, cownbd_s3_verify_failures,
 *   cownbd_chunk_cache_hits, cownbd_chunk_cache_misses, cownbd_chunk_cache_bytes
 * Gauges holding monotonic totals (the source counters live in the object-store context).
 */
function addObjectStoreGauges(registry: Registry, stats: () => ObjectStoreStats | undefined): void {
  const gauges: Array<[string, string, keyof ObjectStoreStats]> = [
    ['cownbd_s3_gets', 'Chunk and manifest GETs sent to the object store', 'gets'],
    ['cownbd_s3_get_bytes', 'Bytes received from the object store', 'getBytes'],
    ['cownbd_s3_get_errors', 'GETs that failed after their retries', 'getErrors'],
    ['cownbd_s3_verify_failures', 'Chunks refused because they did not match their SHA-256', 'verifyFailures'],
    ['cownbd_chunk_cache_hits', 'Chunk reads served from the local cache', 'cacheHits'],
    ['cownbd_chunk_cache_misses', 'Chunk reads that had to fetch (or wait for a fetch)', 'cacheMisses'],
    ['cownbd_chunk_cache_bytes', 'Bytes of chunk files in the local cache', 'cacheBytes'],
  ];
  for (const [name, help, key] of gauges) {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(stats()?.[key] ?? 0);
      },
    });
  }
}
