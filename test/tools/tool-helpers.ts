/**
 * Helpers for the image-tool tests: run the REAL built CLI (process.execPath
 * dist/cli/main.js), make UML cow files with the real uml_mkcow and poke sectors into them
 * byte by byte (bitmap bit + data, straight from docs/cow-format.md#v3 and docs/cow-format.md#bitmap, independent of
 * src/), and validate --json output against the exported schemas with ajv.
 */
import { spawn, spawnSync } from 'node:child_process';
import { openSync, closeSync, readSync, writeSync, utimesSync, writeFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { expect } from 'vitest';
import { assertBuilt, CLI_PATH } from '../helpers/server.js';

export const MTIME = 1_643_767_322; // 2022-02-02 02:02:02 UTC

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): CliResult {
  assertBuilt();
  const r = spawnSync(process.execPath, [CLI_PATH, ...args], { cwd: opts.cwd, encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Run and expect exit 0; returns stdout. */
export function cliOk(args: string[], opts: { cwd?: string } = {}): string {
  const r = cli(args, opts);
  if (r.status !== 0) throw new Error(`cownbd ${args.join(' ')} → ${r.status}\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

export function cliJson<T = any>(args: string[], opts: { cwd?: string; status?: number } = {}): T {
  const r = cli([...args, '--json'], opts);
  expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(opts.status ?? 0);
  return JSON.parse(r.stdout) as T;
}

/** Spawn the CLI asynchronously (for SIGINT tests). */
export function cliSpawn(args: string[], cwd?: string) {
  assertBuilt();
  return spawn(process.execPath, [CLI_PATH, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

export function run(cmd: string, args: string[], cwd?: string): CliResult {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function runOk(cmd: string, args: string[], cwd?: string): string {
  const r = run(cmd, args, cwd);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} → ${r.status}\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

/** Backing file whose sector i is filled with byte (i*7+1)&0xff (never all-zero), fixed mtime. */
export function makeBacking(file: string, size: number): string {
  const buf = Buffer.alloc(size);
  for (let s = 0; s * 512 < size; s++) buf.fill((s * 7 + 1) & 0xff, s * 512, Math.min(size, s * 512 + 512));
  writeFileSync(file, buf);
  utimesSync(file, MTIME, MTIME);
  return file;
}

/** uml_mkcow geometry for a v3 file with alignment 4096. */
export function v3Geometry(size: number): { bitmapOffset: number; bitmapLength: number; dataOffset: number } {
  const bitmapLength = Math.ceil(Math.ceil(size / 512) / 8);
  return { bitmapOffset: 8192, bitmapLength, dataOffset: Math.ceil((8192 + bitmapLength) / 4096) * 4096 };
}

/** Write sectors into a cow file like UML does: data at dataOffset + s*512, then set bit s. */
export function pokeSectors(file: string, geometry: { bitmapOffset: number; dataOffset: number }, sectors: Record<number, number>): void {
  const fd = openSync(file, 'r+');
  try {
    for (const [k, fill] of Object.entries(sectors)) {
      const s = Number(k);
      writeSync(fd, Buffer.alloc(512, fill), 0, 512, geometry.dataOffset + s * 512);
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, geometry.bitmapOffset + (s >> 3));
      b[0] = b[0]! | (1 << (s & 7));
      writeSync(fd, b, 0, 1, geometry.bitmapOffset + (s >> 3));
    }
  } finally {
    closeSync(fd);
  }
}

export function pokeBytes(file: string, offset: number, bytes: number[] | Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    const b = Buffer.from(bytes);
    writeSync(fd, b, 0, b.length, offset);
  } finally {
    closeSync(fd);
  }
}

const ajv = new Ajv2020({ allErrors: true, strict: false });

export function expectSchema(schema: object, value: unknown): void {
  const validate = ajv.compile(schema);
  const ok = validate(value);
  expect(ok, JSON.stringify(validate.errors, null, 2)).toBe(true);
}
