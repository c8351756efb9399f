/**
 * Test helper: temp dirs, patterned raw images and file hashes.
 *
 * The pattern is position-dependent (every 8-byte word holds its own offset, XOR a seed),
 * so a read from the wrong offset can never pass by accident.
 */
import { createHash } from 'node:crypto';
import type { ImageFormat } from '../../src/formats/open-image.js';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, openSync, ftruncateSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface TempDir {
  path: string;
  file(name: string): string;
  cleanup(): void;
}

export function makeTempDir(prefix = 'cownbd-test-', parent = tmpdir()): TempDir {
  const dir = mkdtempSync(path.join(parent, prefix));
  return {
    path: dir,
    file: (name) => path.join(dir, name),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Deterministic bytes for [offset, offset+length): word i (8-byte aligned) = (offset_of_word ^ seed). */
export function pattern(offset: number, length: number, seed = 0): Buffer {
  const start = Math.floor(offset / 8) * 8;
  const end = Math.ceil((offset + length) / 8) * 8;
  const buf = Buffer.alloc(end - start);
  for (let o = start; o < end; o += 8) {
    buf.writeUInt32BE((Math.floor(o / 0x100000000) ^ seed) >>> 0, o - start);
    buf.writeUInt32BE(((o >>> 0) ^ (seed * 0x9e3779b1)) >>> 0, o - start + 4);
  }
  return buf.subarray(offset - start, offset - start + length);
}

/** Sparse raw image of `size` bytes; `data` ranges are filled with pattern(seed). */
export function createRawImage(file: string, size: number, data: Array<[offset: number, length: number]> = [], seed = 0): string {
  const fd = openSync(file, 'w');
  try {
    ftruncateSync(fd, size);
    for (const [off, len] of data) writeSync(fd, pattern(off, len, seed), 0, len, off);
  } finally {
    closeSync(fd);
  }
  return file;
}

/** Fully patterned raw image. */
export function createPatternedImage(file: string, size: number, seed = 0): string {
  writeFileSync(file, pattern(0, size, seed));
  return file;
}

export function sha256File(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * The whole virtual disk of an image (opened read-only through openImage; the format is
 * probed unless named).
 */
export async function readImage(file: string, format?: ImageFormat): Promise<Buffer> {
  const { openImage } = await import('../../src/formats/open-image.js');
  const dev = await openImage(file, { readOnly: true, format });
  try {
    const out = Buffer.alloc(dev.size);
    await dev.read(0, out);
    return out;
  } finally {
    await dev.close();
  }
}
