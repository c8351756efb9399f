/**
 * Image fuzzing campaign (issue 15): cow files of every layout (v1, v2, v3, broken v3,
 * QEMU i386/x86_64) and add-cow files, with mutated headers and bitmaps, go through what
 * `info`, `check` and `serve` run (runInfo with the chain, runCheck, openImage writable
 * + reads + a write + flush, in-process for speed; a sample also through the real CLI).
 * Every case must end in a correct open or ONE-line error, within 5 s, with bounded
 * memory, and no case may change the backing file.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/formats/open-image.js';
import { runCheck } from '../../src/tools/check.js';
import { runInfo } from '../../src/tools/info.js';
import { craftAddCow } from '../helpers/add-cow-craft.js';
import { craftCow, type CraftLayout } from '../helpers/cow-craft.js';
import { createPatternedImage, makeTempDir, sha256File } from '../helpers/images.js';
import { CLI_PATH } from '../helpers/server.js';
import { CAMPAIGN, report, rng, timeoutFor } from './knobs.js';

const MiB = 1024 * 1024;
const CASE_DEADLINE_MS = 5000;
const CLI_SAMPLE_EVERY = 250;
const RSS_LIMIT_MIB = 1024;
const LAYOUTS: CraftLayout[] = ['v1', 'v2', 'v3', 'v3-broken', 'qemu-i386', 'qemu-x86_64'];
const INTERESTING = [0n, 1n, 0x7fn, 0x80n, 0xffn, 0x1000n, 0xffffffffn, 0x100000000n, 2n ** 44n, 2n ** 50n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

function deadline<T>(p: Promise<T>, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => (t = setTimeout(() => reject(new Error(`HUNG: ${what} took over ${CASE_DEADLINE_MS} ms`)), CASE_DEADLINE_MS)))]).finally(() => clearTimeout(t));
}

function mutate(r: () => number, seed: Buffer, headerEnd: number): Buffer {
  const buf = Buffer.from(seed);
  const n = 1 + Math.floor(r() * 4);
  for (let i = 0; i < n; i++) {
    const x = r();
    const at = Math.floor(r() * Math.min(buf.length, x < 0.85 ? headerEnd : buf.length));
    if (x < 0.4 && at + 8 <= buf.length) {
      const v = INTERESTING[Math.floor(r() * INTERESTING.length)]!;
      const width = r() < 0.5 ? 4 : 8;
      const le = r() < 0.5;
      const val = width === 4 ? v & 0xffffffffn : v;
      if (width === 4) le ? buf.writeUInt32LE(Number(val), at) : buf.writeUInt32BE(Number(val), at);
      else le ? buf.writeBigUInt64LE(val, at) : buf.writeBigUInt64BE(val, at);
    } else if (x < 0.8) {
      buf[at] ^= 1 << Math.floor(r() * 8);
    } else if (x < 0.9) {
      buf[at] = Math.floor(r() * 256);
    } else {
      return buf.subarray(0, at);
    }
  }
  return buf;
}

const oneLine = (err: unknown): boolean => !String((err as Error)?.message ?? err).includes('\n');

describe('image fuzzing campaign', () => {
  // tmpfs when there is one: every case flushes, and disk fsyncs would dominate the run.
  const tmp = makeTempDir('cownbd-imgfuzz-', existsSync('/dev/shm') ? '/dev/shm' : undefined);
  afterAll(() => tmp.cleanup());

  it(
    `${CAMPAIGN.imageCases} mutated cow/add-cow images: one-line error or correct open, bounded, backing untouched`,
    async () => {
      const backing = createPatternedImage(tmp.file('base.raw'), MiB, 6);
      const sum = sha256File(backing);
      const mtime = Math.floor(statSync(backing).mtimeMs / 1000);
      writeFileSync(tmp.file('image.raw'), Buffer.alloc(MiB));
      const seeds = [
        ...LAYOUTS.map((layout) => ({ kind: 'cow', bytes: craftCow({ layout, backingPath: backing, size: MiB, mtime, sectors: { 1: 0xaa, 300: 0xbb } }).bytes, headerEnd: 4136 + 256 })),
        { kind: 'add-cow', bytes: craftAddCow({ imageName: 'image.raw', backingName: backing, virtualSize: MiB, clusterBits: 12, bitmap: Buffer.from([0x05, 0x80]) }), headerEnd: 4096 + 64 },
        { kind: 'add-cow', bytes: craftAddCow({ imageName: 'image.raw', virtualSize: MiB, clusterBits: 16 }), headerEnd: 4096 + 64 },
      ];
      const r = rng(CAMPAIGN.seed);
      const counts = { opened: 0, refused: 0, checkExit: {} as Record<number, number>, cli: 0, violations: 0 };
      const violations: string[] = [];
      let rssMax = 0;
      const started = Date.now();
      for (let i = 0; i < CAMPAIGN.imageCases; i++) {
        const seed = seeds[Math.floor(r() * seeds.length)]!;
        const file = tmp.file(`case.${seed.kind}`);
        writeFileSync(file, mutate(r, seed.bytes, seed.headerEnd));
        const fail = (what: string) => {
          counts.violations++;
          if (violations.length < 5) violations.push(`case ${i} (${seed.kind}): ${what}`);
        };
        try {
          const c = await deadline(runCheck(file), 'check');
          counts.checkExit[c.exitCode] = (counts.checkExit[c.exitCode] ?? 0) + 1;
          if (c.error && !oneLine(c.error)) fail(`check error spans lines: ${c.error}`);
        } catch (err) {
          fail(`check threw: ${(err as Error).message}`);
        }
        await deadline(runInfo(file, { chain: true }), 'info').catch((err: unknown) => {
          if (!oneLine(err) || /HUNG/.test(String(err))) fail(`info: ${(err as Error).message}`);
        });
        try {
          const dev = await deadline(openImage(file, { readOnly: false }), 'open');
          try {
            const head = Buffer.alloc(Math.min(dev.size, 64 * 1024));
            await deadline(dev.read(0, head), 'read');
            if (dev.size >= 4096) {
              await deadline(dev.write(dev.size - 4096 > 0 ? Math.floor(r() * (dev.size / 512 - 8)) * 512 : 0, Buffer.alloc(4096, 0x42)), 'write').catch((err: unknown) => {
                if (!oneLine(err)) fail(`write: ${(err as Error).message}`);
              });
              await deadline(dev.flush(), 'flush').catch(() => undefined);
            }
            counts.opened++;
          } finally {
            await dev.close();
          }
        } catch (err) {
          counts.refused++;
          if (!oneLine(err) || /HUNG|allocation failed|"length" is out of range|ERR_OUT_OF_RANGE|Maximum call stack/.test(String(err))) fail(`serve-open: ${(err as Error).message}`);
        }
        if (i % CLI_SAMPLE_EVERY === 0) {
          // The real CLI on the same case: finishes, one line on stderr when it fails.
          for (const args of [['info', '--backing-chain', file], ['check', file]]) {
            const res = spawnSync(process.execPath, [CLI_PATH, ...args], { encoding: 'utf8', timeout: CASE_DEADLINE_MS * 2 });
            counts.cli++;
            if (res.status === null) fail(`cli ${args[0]} hung`);
            else if (res.status !== 0 && args[0] === 'info' && res.stderr.trim().split('\n').length !== 1) fail(`cli info stderr: ${res.stderr}`);
          }
        }
        if (i % 200 === 0) rssMax = Math.max(rssMax, process.memoryUsage().rss / MiB);
      }
      rssMax = Math.max(rssMax, process.memoryUsage().rss / MiB);
      const seconds = (Date.now() - started) / 1000;
      report(
        `image: ${CAMPAIGN.imageCases} cases in ${seconds.toFixed(1)} s (${counts.opened} opened + written, ${counts.refused} refused with one line, ` +
          `check exits ${JSON.stringify(counts.checkExit)}, ${counts.cli} CLI runs), max RSS ${rssMax.toFixed(0)} MiB, backing unchanged: ${sha256File(backing) === sum}, ` +
          `${counts.violations} violations, seed ${CAMPAIGN.seed}`,
      );
      expect(violations).toEqual([]);
      expect(sha256File(backing)).toBe(sum);
      expect(rssMax).toBeLessThan(RSS_LIMIT_MIB);
    },
    timeoutFor(CAMPAIGN.imageCases, 60),
  );
});
