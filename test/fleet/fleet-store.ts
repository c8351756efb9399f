/**
 * Shared setup of the fleet tests: an in-process StoreClient pointed at a test S3 server
 * (127.0.0.1 only; credentials from S3_ENV, as the CLI's children get them).
 */
import { StoreClient } from '../../src/objectstore/store-client.js';
import { S3_ENV } from '../helpers/s3-server.js';

/** A client as the server builds one, with short deadlines (tests fail fast). */
export function testClient(endpoint: string, deadlineMs = 5000): StoreClient {
  Object.assign(process.env, S3_ENV);
  return new StoreClient({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    maxParallelGets: 8,
    requestTimeoutMs: Math.max(500, Math.floor(deadlineMs / 3)),
    deadlineMs,
    maxAttempts: 3,
  });
}
