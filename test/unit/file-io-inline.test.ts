/**
 * FileIo's inline-read decision: small reads always try the synchronous page-cache path;
 * reads above 128 KiB only while the server says it is quiet (setQuietProbe), so a busy
 * server copies large reads on the threadpool. Real file, real addon (CI: required).
 */
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileIo } from '../../src/block/file-io.js';
import { defaultIoPolicy } from '../../src/block/io-policy.js';
import { nativeFs, nativeFsUnavailableReason, type NativeFs } from '../../src/block/native-fs.js';

const KiB = 1024;
const available = Boolean(nativeFs) || process.env.CI === 'true';
if (!nativeFs && process.env.CI !== 'true') console.warn(`\n*** SKIPPING file-io inline tests: ${nativeFsUnavailableReason} ***\n`);

describe.runIf(available)('FileIo inline reads', () => {
  let dir: string;
  let fh: FileHandle;
  let inlineCalls = 0;
  let io: FileIo;
  beforeAll(async () => {
    if (!nativeFs) throw new Error(`native addon unavailable in CI: ${nativeFsUnavailableReason}`);
    dir = await mkdtemp(path.join(os.tmpdir(), 'cownbd-fileio-'));
    fh = await open(path.join(dir, 'f'), 'w+');
    const data = Buffer.alloc(1024 * KiB);
    for (let i = 0; i < data.length; i++) data[i] = i % 251;
    await fh.write(data, 0, data.length, 0);
    const counting: NativeFs = Object.assign(Object.create(nativeFs) as NativeFs, {
      preadNoWait: (fd: number, buf: Uint8Array, pos: number) => {
        inlineCalls++;
        return nativeFs!.preadNoWait!(fd, buf, pos);
      },
    });
    io = new FileIo({ ...defaultIoPolicy(), native: counting });
  });
  afterAll(async () => {
    await fh?.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function readCounting(length: number): Promise<{ inline: number; bytes: Buffer }> {
    const before = inlineCalls;
    const bytes = Buffer.alloc(length);
    await io.read(fh, 4096, bytes);
    return { inline: inlineCalls - before, bytes };
  }

  it('reads small ranges inline whatever the server says, large ones only when quiet', async () => {
    let quiet = true;
    io.setQuietProbe(() => quiet);
    expect((await readCounting(64 * KiB)).inline).toBeGreaterThan(0);
    expect((await readCounting(512 * KiB)).inline).toBeGreaterThan(0);
    quiet = false;
    expect((await readCounting(64 * KiB)).inline).toBeGreaterThan(0);
    const busy = await readCounting(512 * KiB);
    expect(busy.inline).toBe(0);
    // Same bytes either way.
    for (let i = 0; i < busy.bytes.length; i += 4099) expect(busy.bytes[i]).toBe((4096 + i) % 251);
  });
});
