/**
 * Hostile qcow2 files: images made by qemu-img (plain, compressed deflate and zstd,
 * extended L2, over a raw backing), then mutated — header fields, extensions, L1 and L2
 * entries, compressed data — and opened read-only, read end to end and block-status'd.
 * Every case must end in a correct read or ONE-line error naming the file, within 5 s,
 * and no case may change the backing file. Deterministic (seeded).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/formats/open-image.js';
import { mustSucceed, qemuImg } from '../helpers/clients.js';
import { makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { makeQcow2, prng, qemuIoWrites, randomOps } from '../helpers/qcow2-vectors.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const CASES_PER_SEED = Number(process.env.QCOW2_FUZZ_CASES ?? 60);
const CASE_DEADLINE_MS = 5000;
const INTERESTING = [0n, 1n, 0x1ffn, 0x200n, 0xffffn, 0x10000n, 0xffffffffn, 1n << 32n, 1n << 53n, 1n << 56n, 1n << 62n, 1n << 63n, (1n << 64n) - 1n];

function deadline<T>(p: Promise<T>, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<T>((_, reject) => (t = setTimeout(() => reject(new Error(`HUNG: ${what}`)), CASE_DEADLINE_MS)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

/** Offsets worth hitting: the header, the extension area, the L1 table, L2 tables, data. */
function targets(img: Buffer): number[] {
  const l1 = Number(img.readBigUInt64BE(40));
  const l1Size = img.readUInt32BE(36);
  const out = [0, 4, 8, 16, 20, 24, 32, 36, 40, 48, 56, 60, 64, 72, 80, 96, 100, 104, 112, 120];
  for (let i = 0; i < Math.min(l1Size, 4); i++) {
    out.push(l1 + i * 8);
    const l2 = Number(img.readBigUInt64BE(l1 + i * 8) & 0x00ff_ffff_ffff_fe00n);
    if (l2 > 0 && l2 < img.length) for (let j = 0; j < 16; j++) out.push(l2 + j * 8);
  }
  return out.filter((o) => o + 8 <= img.length);
}

function mutate(r: () => number, seed: Buffer): Buffer {
  const buf = Buffer.from(seed);
  const spots = targets(buf);
  const n = 1 + Math.floor(r() * 3);
  for (let i = 0; i < n; i++) {
    const x = r();
    if (x < 0.5) {
      const at = spots[Math.floor(r() * spots.length)]!;
      buf.writeBigUInt64BE(INTERESTING[Math.floor(r() * INTERESTING.length)]!, at);
    } else if (x < 0.8) {
      const at = spots[Math.floor(r() * spots.length)]! + Math.floor(r() * 8);
      if (at < buf.length) buf[at]! ^= 1 << Math.floor(r() * 8);
    } else {
      // Anywhere: compressed streams and data too.
      const at = Math.floor(r() * buf.length);
      buf[at] = Math.floor(r() * 256);
    }
  }
  return buf;
}

describe.runIf(requireTool('qemu-img') && requireTool('qemu-io'))('qcow2 reader: mutated images fail cleanly or read', () => {
  let tmp: TempDir;
  const seeds: Array<[string, Buffer]> = [];
  let backing: string;
  beforeAll(async () => {
    tmp = makeTempDir('qcow2-fuzz-');
    backing = tmp.file('base.raw');
    mustSucceed(await qemuImg(['create', '-q', '-f', 'raw', backing, String(2 * MiB)]));
    const plain = await makeQcow2(tmp.file('plain.qcow2'), { size: 2 * MiB, options: 'cluster_size=4096' });
    await qemuIoWrites(plain, randomOps(5, 2 * MiB, 12, 128 * 1024));
    const ext = await makeQcow2(tmp.file('ext.qcow2'), { size: 2 * MiB, options: 'extended_l2=on,cluster_size=16384', backing, backingFormat: 'raw' });
    await qemuIoWrites(ext, randomOps(6, 2 * MiB, 12, 128 * 1024));
    seeds.push(['plain', readFileSync(plain)], ['extended-l2 over raw', readFileSync(ext)]);
    for (const type of ['zlib', 'zstd']) {
      const c = tmp.file(`c-${type}.qcow2`);
      mustSucceed(await qemuImg(['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', `compression_type=${type},cluster_size=4096`, plain, c]));
      seeds.push([`compressed ${type}`, readFileSync(c)]);
    }
  });
  afterAll(() => tmp?.cleanup());

  it('every case: a read of the whole disk and its status, or one error line naming the file', async () => {
    const before = sha256File(backing);
    let opened = 0;
    let refused = 0;
    let failedReads = 0;
    for (const [name, seed] of seeds) {
      const r = prng(name.length * 7919);
      for (let c = 0; c < CASES_PER_SEED; c++) {
        const file = tmp.file(`case-${name.replace(/\W+/g, '-')}-${c}.qcow2`);
        writeFileSync(file, mutate(r, seed));
        const what = `${name} case ${c}`;
        let dev;
        try {
          dev = await deadline(openImage(file, { readOnly: true, format: 'qcow2' }), `open ${what}`);
        } catch (err) {
          const msg = (err as Error).message;
          expect(msg, what).not.toMatch(/^HUNG/);
          expect(msg, what).not.toContain('\n');
          expect(msg, what).toContain(file);
          refused++;
          continue;
        }
        opened++;
        try {
          const size = Math.min(dev.size, 4 * MiB);
          const buf = Buffer.alloc(size);
          await deadline(
            (async () => {
              await dev.read(0, buf);
              for (let pos = 0; pos < size; ) for (const e of await dev.blockStatus(pos, size - pos)) pos += e.length;
            })(),
            `read ${what}`,
          );
        } catch (err) {
          const msg = (err as Error).message;
          expect(msg, what).not.toMatch(/^HUNG/);
          expect(msg, what).not.toContain('\n');
          expect((err as { code?: string }).code, `${what}: ${msg}`).toMatch(/^E[A-Z]+$/);
          expect(msg, what).toContain(file);
          failedReads++;
        } finally {
          await dev.close();
        }
      }
    }
    expect(sha256File(backing)).toBe(before);
    // The campaign exercised both sides: images refused at open and images read.
    expect(refused).toBeGreaterThan(10);
    expect(opened).toBeGreaterThan(10);
    console.log(`qcow2 fuzz: ${opened} opened (${failedReads} with a failed read), ${refused} refused`);
  });
});
