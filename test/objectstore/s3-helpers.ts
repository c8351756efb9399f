/**
 * Shared steps of the object-store tests: run the CLI against the test S3 server, publish,
 * serve an s3:// image, read through NBD with real clients.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import { mustSucceed, runTool, type ToolResult } from '../helpers/clients.js';
import { CLI_PATH, startServer, type RunningServer } from '../helpers/server.js';
import { S3_ENV, type S3TestServer } from '../helpers/s3-server.js';

export const MiB = 1024 * 1024;

/** `cownbd ARGS… --s3-endpoint …` (credentials from the environment, as in production). */
export function cownbd(s3: Pick<S3TestServer, 'flags'>, args: string[], timeoutMs = 60_000): Promise<ToolResult> {
  return runTool(process.execPath, [CLI_PATH, ...args, ...s3.flags], { env: S3_ENV, timeoutMs });
}

/** `cownbd cache show --json` of a cache directory. */
export async function cacheShow(cacheDir: string): Promise<{ chunks: number; bytes: number }> {
  const r = mustSucceed(await runTool(process.execPath, [CLI_PATH, 'cache', 'show', '--cache-dir', cacheDir, '--json']));
  return JSON.parse(r.stdout) as { chunks: number; bytes: number };
}

export interface Published {
  uri: string;
  version: string;
  chunks: number;
  zeroChunks: number;
  uploadedChunks: number;
  presentChunks: number;
  repairedChunks: number;
  uploadedBytes: number;
}

export async function publish(s3: Pick<S3TestServer, 'flags'>, image: string, target: string, extra: string[] = []): Promise<Published> {
  const r = mustSucceed(await cownbd(s3, ['publish', image, target, '--json', ...extra]));
  return JSON.parse(r.stdout) as Published;
}

export function serveS3(s3: Pick<S3TestServer, 'flags'>, args: string[], cacheDir: string, extra: string[] = []): Promise<RunningServer> {
  return startServer([...args, ...s3.flags, '--cache-dir', cacheDir, '--s3-timeout', '3000', '--s3-retries', '2', ...extra], { env: S3_ENV });
}

/** Read [offset, offset+length) of an export with qemu-io; resolves to the tool result. */
export function qemuRead(uri: string, offset: number, length: number): Promise<ToolResult> {
  return runTool('qemu-io', ['-r', '-f', 'raw', '-c', `read ${offset} ${length}`, uri], { timeoutMs: 20_000 });
}

/** Copy a whole export to a file with nbdcopy and compare it with `expected`. */
export async function expectExportEquals(uri: string, expectedFile: string, outFile: string): Promise<void> {
  mustSucceed(await runTool('nbdcopy', [uri, outFile], { timeoutMs: 60_000 }));
  expect(readFileSync(outFile).equals(readFileSync(expectedFile))).toBe(true);
}
