/**
 * Test helper: a real S3 REST server (s3rver, in this test process) on 127.0.0.1 with a
 * temp directory, plus request accounting taken at the server (what cownbd really fetched).
 *
 *   const s3 = await startS3Server();          // bucket "golden" exists
 *   s3.endpoint            → http://127.0.0.1:PORT
 *   s3.stats.chunkGets     → GETs of chunk objects (keys under cownbd-chunks/), chunkGetBytes
 *   await s3.stop(); await s3.start();          // outage and recovery, same port, same data
 *   await s3.close();                           // stop and delete the directory
 *
 * PUT honours If-None-Match: * and If-Match: ETAG (412 when they fail), requests on one key
 * are serialised and a PUT is all or nothing (s3-conditional.ts): what docs/fleet.md needs.
 *
 * S3_ENV holds the credentials s3rver accepts, for the cownbd child processes (the SDK's
 * default chain reads them from the environment like any AWS deployment).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import S3rver from 's3rver';
import { conditionalWrites } from './s3-conditional.js';

// AWS_EC2_METADATA_DISABLED: nothing may leave the machine, not even the SDK's credentials probe.
export const S3_ENV = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true' };
export const CHUNK_FOLDER = 'cownbd-chunks/';

export interface S3Stats {
  requests: number;
  chunkGets: number;
  chunkGetBytes: number;
  heads: number;
  puts: number;
  /** Keys of chunk GETs, in order. */
  chunkKeys: string[];
}

export interface S3TestServer {
  readonly endpoint: string;
  readonly port: number;
  readonly dir: string;
  readonly stats: S3Stats;
  resetStats(): void;
  /** CLI flags pointing cownbd at this server. */
  readonly flags: string[];
  /** Start again after stop() (same port, same data); no-op while running. */
  start(): Promise<void>;
  stop(): Promise<void>;
  close(): Promise<void>;
}

interface KoaLike {
  method: string;
  path: string;
  status: number;
  response: { get(field: string): string };
}

export async function startS3Server(buckets: string[] = ['golden']): Promise<S3TestServer> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cownbd-s3-'));
  const stats: S3Stats = { requests: 0, chunkGets: 0, chunkGetBytes: 0, heads: 0, puts: 0, chunkKeys: [] };
  let port = 0;
  let server: S3rver | undefined;

  const start = async (): Promise<void> => {
    if (server) return;
    const s = new S3rver({ port, address: '127.0.0.1', silent: true, directory: dir, configureBuckets: buckets.map((name) => ({ name })) });
    // Accounting runs first and sees the final status (Koa composes middleware at listen time).
    (s as unknown as { middleware: unknown[] }).middleware.unshift(async (ctx: KoaLike, next: () => Promise<void>) => {
      await next();
      stats.requests++;
      if (ctx.method === 'HEAD') stats.heads++;
      if (ctx.method === 'PUT') stats.puts++;
      if (ctx.method === 'GET' && ctx.status < 300 && ctx.path.includes(`/${CHUNK_FOLDER}`)) {
        stats.chunkGets++;
        stats.chunkGetBytes += Number(ctx.response.get('Content-Length') || 0);
        stats.chunkKeys.push(ctx.path);
      }
    });
    // Conditional PUTs, per-key serialisation and all-or-nothing PUTs (s3-conditional.ts),
    // after the accounting (which sees their 412s) and before s3rver's own handlers.
    (s as unknown as { middleware: unknown[] }).middleware.splice(1, 0, conditionalWrites());
    const info = await s.run();
    port = info.port;
    server = s;
  };

  await start();
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    port,
    dir,
    stats,
    flags: ['--s3-endpoint', endpoint],
    resetStats() {
      Object.assign(stats, { requests: 0, chunkGets: 0, chunkGetBytes: 0, heads: 0, puts: 0, chunkKeys: [] });
    },
    start,
    stop,
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };

  async function stop(): Promise<void> {
    const s = server;
    server = undefined;
    if (!s) return;
    // Like a crash: drop every connection now (close() alone waits for keep-alive ones).
    (s as unknown as { httpServer?: { closeAllConnections(): void } }).httpServer?.closeAllConnections();
    await s.close();
  }
}
