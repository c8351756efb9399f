/**
 * StoreClient: the few S3 operations cownbd needs (GET, HEAD, PUT, LIST), with the
 * robustness rules in one place:
 *
 *   - credentials from the AWS default chain (environment, shared config/profile, instance
 *     metadata): the SDK resolves them; we never read or log them;
 *   - endpoint / path-style addressing for MinIO, Ceph RGW, Garage, s3rver;
 *   - retries are ours, not the SDK's (its retries end when the headers arrive): one
 *     attempt is the whole operation — status, body, length and the caller's check of the
 *     bytes — watched for a missing answer, a stalled or trickling body, with full-jitter
 *     backoff between attempts and an overall deadline (retry.ts). A dead or trickling store fails an operation after `deadlineMs`,
 *     never hangs; a reset mid-body or a flipped bit costs one attempt, not the read;
 *   - the SDK's request handler also gets `requestTimeout` + `throwOnRequestTimeout` (without
 *     the latter its timeout only prints a warning) and our logger (its warnings would be
 *     plain text in the JSON log);
 *   - at most `maxParallelGets` GETs in flight (bounds memory: each holds one chunk);
 *   - checksums: the SDK's default CRC32 on every PUT/GET is turned off
 *     (WHEN_REQUIRED) — chunks are verified by their SHA-256 name, and third-party stores
 *     (and s3rver) differ in what flexible-checksum headers they accept.
 *
 * Counters (gets, bytes, errors) feed `cownbd cache`/logs and the tests' fetch accounting.
 *
 * The SDK is loaded on first use (a dynamic import): it costs ~30 MiB of RSS and start-up
 * time in every cownbd process, and most never touch an object store.
 */
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { Semaphore } from 'async-mutex';
import type { Logger } from '../logging.js';
import { type Attempt, BadResponseError, httpStatusOf, isNotFound, RetriesExhaustedError, withRetries } from './retry.js';

type S3Sdk = typeof import('@aws-sdk/client-s3');
interface Connected {
  readonly sdk: S3Sdk;
  readonly s3: S3Client;
}

export interface StoreConfig {
  /** Custom endpoint (MinIO, Ceph, Garage); undefined: AWS for the region. */
  readonly endpoint?: string;
  readonly region: string;
  /** Path-style addressing (http://host/bucket/key); needed by most non-AWS stores. */
  readonly forcePathStyle: boolean;
  readonly maxParallelGets: number;
  /** Per attempt: connect + response timeout. */
  readonly requestTimeoutMs: number;
  /** Per operation including retries. */
  readonly deadlineMs: number;
  readonly maxAttempts: number;
}

export const DEFAULT_STORE_CONFIG: Omit<StoreConfig, 'region' | 'forcePathStyle'> = {
  maxParallelGets: 16,
  requestTimeoutMs: 10_000,
  deadlineMs: 30_000,
  maxAttempts: 4,
};

export interface StoreStats {
  gets: number;
  getBytes: number;
  getErrors: number;
  heads: number;
  puts: number;
  putBytes: number;
}

/** The object does not exist (404/NoSuchKey), as opposed to the store being unreachable. */
export class ObjectNotFoundError extends Error {
  override name = 'ObjectNotFoundError';
}

/**
 * A conditional PUT's condition did not hold (412 Precondition Failed; 409
 * ConditionalRequestConflict, AWS's answer to a race; 404 for If-Match on a missing key).
 * Never retried: it is an answer (docs/fleet.md, "What the store must support").
 */
export class PreconditionFailedError extends Error {
  override name = 'PreconditionFailedError';
}

/** The condition of a conditional PUT: create only if absent, or replace only object `ifMatch`. */
export type PutCondition = { readonly ifNoneMatch: '*' } | { readonly ifMatch: string };

/** Options of one GET. */
export interface GetOptions {
  /** Checks the whole body; a returned string says what is wrong and makes the attempt fail (retried). */
  readonly check?: (body: Buffer) => string | undefined;
  /** The object is known to exist (a chunk a manifest names): a 404 is a glitch, retried. */
  readonly mustExist?: boolean;
}

export class StoreClient {
  readonly stats: StoreStats = { gets: 0, getBytes: 0, getErrors: 0, heads: 0, puts: 0, putBytes: 0 };
  private connected?: Promise<Connected>;
  private readonly gets: Semaphore;

  /** `log`: retries and the SDK's own warnings (default: nowhere). */
  constructor(
    readonly config: StoreConfig,
    private readonly log?: Logger,
  ) {
    this.gets = new Semaphore(Math.max(1, config.maxParallelGets));
  }

  private connect(): Promise<Connected> {
    const log = this.log;
    // The SDK logs every request at info (with its input): that is trace for us.
    const sdkLogger = {
      trace: () => {},
      debug: () => {},
      info: (...a: unknown[]) => log?.trace({ source: 'aws-sdk' }, a.map(String).join(' ')),
      warn: (...a: unknown[]) => log?.warn({ source: 'aws-sdk' }, a.map(sdkText).join(' ')),
      // The SDK logs each failed request as an error object ({ commandName, error, … }); every
      // one is also an attempt this client logs (retrying: warn; final: the caller's error),
      // so the SDK's copy is debug detail, in words rather than "[object Object]".
      error: (...a: unknown[]) => log?.debug({ source: 'aws-sdk' }, a.map(sdkText).join(' ')),
    };
    this.connected ??= import('@aws-sdk/client-s3').then((sdk) => ({
      sdk,
      s3: new sdk.S3Client({
        region: this.config.region,
        ...(this.config.endpoint ? { endpoint: this.config.endpoint } : {}),
        forcePathStyle: this.config.forcePathStyle,
        maxAttempts: 1, // retry.ts retries whole operations
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
        logger: sdkLogger,
        requestHandler: {
          connectionTimeout: this.config.requestTimeoutMs,
          requestTimeout: this.config.requestTimeoutMs,
          throwOnRequestTimeout: true,
          logger: sdkLogger,
        },
      }),
    }));
    return this.connected;
  }

  /** Where this client points, for messages (never includes credentials). */
  describe(): string {
    return this.config.endpoint ?? `AWS S3 (${this.config.region})`;
  }

  /**
   * The whole object, checked (Content-Length, then `o.check`) inside each attempt.
   * Throws ObjectNotFoundError or an Error naming bucket/key, the attempts and the cause.
   */
  async get(bucket: string, key: string, o: GetOptions = {}): Promise<Buffer> {
    return this.gets.runExclusive(async () => {
      try {
        return await this.retried(
          'GET',
          bucket,
          key,
          async (attempt) => {
            this.stats.gets++;
            const { sdk, s3 } = await this.connect();
            const out = await s3.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: attempt.signal });
            if (!out.Body) throw new BadResponseError('empty response body');
            attempt.progress(0);
            const body = await readBody(out.Body as Readable, attempt);
            if (out.ContentLength !== undefined && body.length !== out.ContentLength) {
              throw new BadResponseError(`body has ${body.length} bytes, Content-Length said ${out.ContentLength}`);
            }
            const bad = o.check?.(body);
            if (bad !== undefined) throw new BadResponseError(bad);
            this.stats.getBytes += body.length;
            return body;
          },
          o.mustExist,
        );
      } catch (err) {
        this.stats.getErrors++;
        throw err;
      }
    });
  }

  async exists(bucket: string, key: string): Promise<boolean> {
    return (await this.size(bucket, key)) !== undefined;
  }

  /** The stored length of an object (HEAD), or undefined when there is none. */
  async size(bucket: string, key: string): Promise<number | undefined> {
    try {
      return await this.retried('HEAD', bucket, key, async ({ signal }) => {
        this.stats.heads++;
        const { sdk, s3 } = await this.connect();
        const out = await s3.send(new sdk.HeadObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: signal });
        return out.ContentLength ?? -1;
      });
    } catch (err) {
      if (err instanceof ObjectNotFoundError) return undefined;
      throw err;
    }
  }

  /**
   * `sha256` (hex of `body`, when the caller has it): sent as x-amz-content-sha256, so SigV4
   * signs it instead of hashing the body again — and the store rejects a body that was
   * corrupted on the way (AWS checks it). Content-addressed keys make a retried PUT harmless.
   */
  async put(bucket: string, key: string, body: Buffer, contentType = 'application/octet-stream', sha256?: string): Promise<void> {
    await this.retried('PUT', bucket, key, async ({ signal }) => {
      this.stats.puts++;
      const { sdk, s3 } = await this.connect();
      const cmd = new sdk.PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType });
      if (sha256) {
        cmd.middlewareStack.add(
          (next) => async (args) => {
            const req = args.request as { headers?: Record<string, string> };
            if (req.headers) req.headers['x-amz-content-sha256'] = sha256;
            return next(args);
          },
          { step: 'build', name: 'cownbdKnownPayloadHash' },
        );
      }
      await s3.send(cmd, { abortSignal: signal });
    });
    this.stats.putBytes += body.length;
  }

  /**
   * PUT only if `cond` holds (If-None-Match: * / If-Match: ETAG, atomic at the store);
   * returns the new object's ETag. A failed condition throws PreconditionFailedError. A
   * retried attempt may meet its own earlier success as a failed condition: callers that
   * must know compare the object with what they wrote (src/fleet/conditional-object.ts).
   */
  async putConditional(bucket: string, key: string, body: Buffer, cond: PutCondition, contentType = 'application/json'): Promise<string> {
    try {
      const etag = await this.retried('PUT', bucket, key, async ({ signal }) => {
        this.stats.puts++;
        const { sdk, s3 } = await this.connect();
        const cmd = new sdk.PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: body,
          ContentType: contentType,
          ...('ifMatch' in cond ? { IfMatch: cond.ifMatch } : { IfNoneMatch: cond.ifNoneMatch }),
        });
        return (await s3.send(cmd, { abortSignal: signal })).ETag ?? '';
      });
      this.stats.putBytes += body.length;
      return etag;
    } catch (err) {
      const last = err instanceof Error && err.cause instanceof RetriesExhaustedError ? err.cause.last : err instanceof Error ? err.cause : undefined;
      const status = httpStatusOf(last);
      // 404 is a failed If-Match (no such object); for If-None-Match it would be the bucket: an error.
      if ((err instanceof ObjectNotFoundError && 'ifMatch' in cond) || status === 412 || status === 409) {
        throw new PreconditionFailedError(`s3://${bucket}/${key}: ${'ifMatch' in cond ? `changed since ETag ${cond.ifMatch}` : 'exists already'} (conditional PUT refused)`);
      }
      throw err;
    }
  }

  /** The whole object and its ETag (for a following conditional PUT); undefined when absent. */
  async getWithEtag(bucket: string, key: string): Promise<{ body: Buffer; etag: string } | undefined> {
    try {
      return await this.gets.runExclusive(() =>
        this.retried('GET', bucket, key, async (attempt) => {
          this.stats.gets++;
          const { sdk, s3 } = await this.connect();
          const out = await s3.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: attempt.signal });
          if (!out.Body) throw new BadResponseError('empty response body');
          const body = await readBody(out.Body as Readable, attempt);
          if (out.ContentLength !== undefined && body.length !== out.ContentLength) {
            throw new BadResponseError(`body has ${body.length} bytes, Content-Length said ${out.ContentLength}`);
          }
          if (!out.ETag) throw new BadResponseError('no ETag in the answer');
          return { body, etag: out.ETag };
        }),
      );
    } catch (err) {
      if (err instanceof ObjectNotFoundError) return undefined;
      throw err;
    }
  }

  /** Every key under `prefix` (paginated; each page retried on its own). */
  async list(bucket: string, prefix: string): Promise<string[]> {
    return (await this.listObjects(bucket, prefix)).map((o) => o.key);
  }

  /** Every object under `prefix` with its size and last-modified time (ms since the epoch). */
  async listObjects(bucket: string, prefix: string): Promise<Array<{ key: string; size: number; lastModified: number }>> {
    const objects: Array<{ key: string; size: number; lastModified: number }> = [];
    let token: string | undefined;
    do {
      const out = await this.retried('LIST', bucket, prefix, async ({ signal }) => {
        const { sdk, s3 } = await this.connect();
        return s3.send(new sdk.ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }), { abortSignal: signal });
      });
      for (const o of out.Contents ?? []) if (o.Key) objects.push({ key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified?.getTime() ?? 0 });
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
    return objects;
  }

  /** Delete one object (`gc`); deleting a missing object is not an error in S3. */
  async delete(bucket: string, key: string): Promise<void> {
    await this.retried('DELETE', bucket, key, async ({ signal }) => {
      const { sdk, s3 } = await this.connect();
      await s3.send(new sdk.DeleteObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: signal });
    });
  }

  close(): void {
    void this.connected?.then(({ s3 }) => s3.destroy(), () => {});
  }

  private async retried<T>(op: string, bucket: string, key: string, run: (attempt: Attempt) => Promise<T>, retryNotFound = false): Promise<T> {
    try {
      return await withRetries(
        { maxAttempts: this.config.maxAttempts, attemptMs: this.config.requestTimeoutMs, deadlineMs: this.config.deadlineMs },
        run,
        {
          retryNotFound,
          onRetry: (attempt, err, delayMs) =>
            this.log?.warn({ op, object: `s3://${bucket}/${key}`, attempt, delayMs, err: this.why(err) }, 'object-store attempt failed, retrying'),
        },
      );
    } catch (err) {
      throw this.wrap(op, bucket, key, err);
    }
  }

  private wrap(op: string, bucket: string, key: string, err: unknown): Error {
    const last = err instanceof RetriesExhaustedError ? err.last : err;
    if (isNotFound(last)) return new ObjectNotFoundError(`s3://${bucket}/${key}: not found (${this.describe()})`);
    const tries = err instanceof RetriesExhaustedError ? ` after ${err.attempts} attempt(s)` : '';
    const why = last === undefined ? `no answer within ${this.config.deadlineMs} ms` : this.why(last);
    return new Error(`${op} s3://${bucket}/${key} at ${this.describe()} failed${tries}: ${why}`, { cause: err });
  }

  /** One attempt's failure in words: HTTP status, error code, and a hint for 403. */
  private why(err: unknown): string {
    const status = httpStatusOf(err);
    const e = err as NodeJS.ErrnoException;
    const code = e.code ?? e.name;
    if (status === 403) return `HTTP 403 access denied (${code}): the credentials lack a permission this needs (docs/object-store.md, "Permissions")`;
    const detail = e.message && e.message !== 'UnknownError' ? `: ${e.message}` : '';
    return `${status === undefined ? '' : `HTTP ${status} `}${code}${detail}`;
  }
}

/** One SDK log argument in words: a string, an error's message, or an entry's command and error. */
function sdkText(x: unknown): string {
  if (typeof x !== 'object' || x === null) return String(x);
  if (x instanceof Error) return `${x.name}: ${x.message}`;
  const o = x as { commandName?: unknown; error?: unknown };
  const err = o.error instanceof Error ? `${o.error.name}: ${o.error.message}` : undefined;
  const command = typeof o.commandName === 'string' ? o.commandName : undefined;
  return [command, err].filter((v) => v !== undefined).join(' ') || Object.keys(o).join(',');
}

/** The whole body; the attempt's abort destroys the stream (a trickle cannot outlive its timer). */
async function readBody(stream: Readable, attempt: Attempt): Promise<Buffer> {
  const signal = attempt.signal;
  const onAbort = (): void => {
    stream.destroy(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
  };
  if (signal.aborted) onAbort();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const parts: Buffer[] = [];
    for await (const part of stream) {
      parts.push(part as Buffer);
      attempt.progress((part as Buffer).length);
    }
    return Buffer.concat(parts);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
