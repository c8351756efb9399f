/**
 * StoreClient: the few S3 operations cownbd needs (GET, HEAD, PUT, LIST), with the
 * robustness rules in one place:
 *
 *   - credentials from the AWS default chain (environment, shared config/profile, instance
 *     metadata): the SDK resolves them; we never read or log them;
 *   - endpoint / path-style addressing for MinIO, Ceph RGW, Garage, s3rver;
 *   - every attempt has a socket/request timeout, failed attempts are retried by the SDK's
 *     standard strategy (exponential backoff with jitter, retries ECONNREFUSED/RESET and 5xx),
 *     and every operation has an overall deadline (AbortSignal) — a dead store makes an
 *     operation fail after `deadlineMs`, never hang;
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
import type { S3Client } from '@aws-sdk/client-s3';
import { Semaphore } from 'async-mutex';

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

export class StoreClient {
  readonly stats: StoreStats = { gets: 0, getBytes: 0, getErrors: 0, heads: 0, puts: 0, putBytes: 0 };
  private connected?: Promise<Connected>;
  private readonly gets: Semaphore;

  constructor(readonly config: StoreConfig) {
    this.gets = new Semaphore(Math.max(1, config.maxParallelGets));
  }

  private connect(): Promise<Connected> {
    this.connected ??= import('@aws-sdk/client-s3').then((sdk) => ({
      sdk,
      s3: new sdk.S3Client({
        region: this.config.region,
        ...(this.config.endpoint ? { endpoint: this.config.endpoint } : {}),
        forcePathStyle: this.config.forcePathStyle,
        maxAttempts: this.config.maxAttempts,
        retryMode: 'standard',
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
        requestHandler: { connectionTimeout: this.config.requestTimeoutMs, requestTimeout: this.config.requestTimeoutMs },
      }),
    }));
    return this.connected;
  }

  /** Where this client points, for messages (never includes credentials). */
  describe(): string {
    return this.config.endpoint ?? `AWS S3 (${this.config.region})`;
  }

  /** The whole object. Throws ObjectNotFoundError or an Error naming bucket/key and the cause. */
  async get(bucket: string, key: string): Promise<Buffer> {
    return this.gets.runExclusive(async () => {
      this.stats.gets++;
      try {
        const { sdk, s3 } = await this.connect();
        const out = await s3.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: this.deadline() });
        if (!out.Body) throw new Error('empty response body');
        const body = Buffer.from(await out.Body.transformToByteArray());
        this.stats.getBytes += body.length;
        return body;
      } catch (err) {
        this.stats.getErrors++;
        throw this.wrap('GET', bucket, key, err);
      }
    });
  }

  async exists(bucket: string, key: string): Promise<boolean> {
    this.stats.heads++;
    try {
      const { sdk, s3 } = await this.connect();
      await s3.send(new sdk.HeadObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: this.deadline() });
      return true;
    } catch (err) {
      const e = this.wrap('HEAD', bucket, key, err);
      if (e instanceof ObjectNotFoundError) return false;
      throw e;
    }
  }

  /**
   * `sha256` (hex of `body`, when the caller has it): sent as x-amz-content-sha256, so SigV4
   * signs it instead of hashing the body again — and the store rejects a body that was
   * corrupted on the way (AWS checks it).
   */
  async put(bucket: string, key: string, body: Buffer, contentType = 'application/octet-stream', sha256?: string): Promise<void> {
    this.stats.puts++;
    try {
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
      await s3.send(cmd, { abortSignal: this.deadline() });
      this.stats.putBytes += body.length;
    } catch (err) {
      throw this.wrap('PUT', bucket, key, err);
    }
  }

  /** Every key under `prefix` (paginated). */
  async list(bucket: string, prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      try {
        const { sdk, s3 } = await this.connect();
        const out = await s3.send(new sdk.ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }), {
          abortSignal: this.deadline(),
        });
        for (const o of out.Contents ?? []) if (o.Key) keys.push(o.Key);
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
      } catch (err) {
        throw this.wrap('LIST', bucket, prefix, err);
      }
    } while (token);
    return keys;
  }

  close(): void {
    void this.connected?.then(({ s3 }) => s3.destroy(), () => {});
  }

  private deadline(): AbortSignal {
    return AbortSignal.timeout(this.config.deadlineMs);
  }

  private wrap(op: string, bucket: string, key: string, err: unknown): Error {
    // S3ServiceException's metadata, read structurally: the SDK module may not be loaded here.
    const status = (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
    const name = (err as Error).name;
    if (status === 404 || name === 'NoSuchKey' || name === 'NotFound') {
      return new ObjectNotFoundError(`s3://${bucket}/${key}: not found (${this.describe()})`);
    }
    const code = (err as NodeJS.ErrnoException).code;
    const why = name === 'TimeoutError' || name === 'AbortError' ? `no answer within ${this.config.deadlineMs} ms` : `${code ?? name}: ${(err as Error).message}`;
    return new Error(`${op} s3://${bucket}/${key} at ${this.describe()} failed: ${why}`, { cause: err });
  }
}
