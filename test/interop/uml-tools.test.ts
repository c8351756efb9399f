/**
 * Interop with Debian's uml-utilities (uml_mkcow, uml_moo):
 *   - createCow is byte-identical to uml_mkcow (header and length) for several backings;
 *   - a uml_mkcow overlay written through our driver merges with uml_moo to exactly what
 *     the driver reads;
 *   - uml_moo accepts our crafted v1/v2/v3/broken-v3 files and merges them to the view our
 *     driver reads (so the crafter and the reader agree with the real tool), and refuses
 *     the QEMU layouts with a size mismatch (docs/cow-format.md#qemu-cow).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, symlinkSync, utimesSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/formats/open-image.js';
import { createCow } from '../../src/formats/cow/index.js';
import { writeCraftedCow, type CraftLayout } from '../helpers/cow-craft.js';
import { createPatternedImage, createRawImage, makeTempDir, sha256File, type TempDir, readImage } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';

const haveTools = requireTool('uml_mkcow') && requireTool('uml_moo');
const MiB = 1024 * 1024;
const MTIME = 1_643_767_322;

let tmp: TempDir;
beforeAll(() => {
  tmp = makeTempDir('uml-tools-');
});
afterAll(() => tmp?.cleanup());


function moo(cow: string, out: string): Buffer {
  execFileSync('uml_moo', [cow, out], { stdio: 'pipe' });
  return readFileSync(out);
}

describe.runIf(haveTools)('uml_mkcow / uml_moo interop', () => {
  const sizes: Array<[string, number, boolean]> = [
    ['1 MiB', MiB, false],
    ['1,000,000 B', 1_000_000, false],
    ['4 KiB', 4096, false],
    ['1 MiB + 1536', MiB + 1536, false],
    ['100 MiB sparse', 100 * MiB, true],
  ];
  it.each(sizes)('createCow is byte-identical to uml_mkcow (%s)', async (name, size, sparse) => {
    const dir = tmp.file(`mk-${name.replace(/\W/g, '_')}`);
    mkdirSync(dir);
    const b = path.join(dir, 'base.img');
    if (sparse) createRawImage(b, size, [[0, 4096]]);
    else createPatternedImage(b, size);
    utimesSync(b, MTIME, MTIME);
    execFileSync('uml_mkcow', [path.join(dir, 'theirs.cow'), b]);
    await createCow(path.join(dir, 'ours.cow'), { backingFile: b });
    const theirs = readFileSync(path.join(dir, 'theirs.cow'));
    const ours = readFileSync(path.join(dir, 'ours.cow'));
    expect(ours.length).toBe(theirs.length);
    expect(ours.equals(theirs)).toBe(true);
  });

  it('createCow matches uml_mkcow for relative paths through a directory symlink and a final symlink', async () => {
    const dir = tmp.file('links');
    mkdirSync(path.join(dir, 'real'), { recursive: true });
    const b = createPatternedImage(path.join(dir, 'real', 'base.img'), MiB);
    utimesSync(b, MTIME, MTIME);
    symlinkSync(path.join(dir, 'real'), path.join(dir, 'dirlink'));
    symlinkSync('base.img', path.join(dir, 'real', 'link.img'));
    for (const rel of ['dirlink/link.img', './dirlink/../real/base.img']) {
      execFileSync('uml_mkcow', ['-f', 'theirs.cow', rel], { cwd: dir });
      const old = process.cwd();
      process.chdir(dir);
      try {
        await createCow('ours.cow', { backingFile: rel, force: true });
      } finally {
        process.chdir(old);
      }
      const theirs = readFileSync(path.join(dir, 'theirs.cow'));
      const ours = readFileSync(path.join(dir, 'ours.cow'));
      expect(ours.subarray(0, 4128).toString('latin1')).toBe(theirs.subarray(0, 4128).toString('latin1'));
      expect(ours.length).toBe(theirs.length);
    }
  });

  for (const [name, size] of [
    ['1 MiB', MiB],
    ['odd 1,000,000', 1_000_000],
  ] as const) {
    it(`a uml_mkcow overlay written by the driver merges (uml_moo) to what the driver reads (${name})`, async () => {
      const dir = tmp.file(`rw-${size}`);
      mkdirSync(dir);
      const b = createPatternedImage(path.join(dir, 'base.img'), size, 5);
      utimesSync(b, MTIME, MTIME);
      const before = sha256File(b);
      const cow = path.join(dir, 'ov.cow');
      execFileSync('uml_mkcow', [cow, b]);
      const dev = await openImage(cow);
      // Partial sectors, spans across bitmap bytes, an aligned 64 KiB write, zeroes and trim.
      await dev.write(0, Buffer.alloc(512, 0xee));
      await dev.write(9 * 512 + 17, Buffer.alloc(1000, 0x11));
      await dev.write(100 * 512, Buffer.alloc(65536, 0x22));
      await dev.writeZeroes(300 * 512 + 3, 20_000);
      await dev.trim(500 * 512, 8 * 512);
      await dev.write(size - 700, Buffer.alloc(700, 0x33)); // last (possibly partial) sector
      await dev.flush();
      await dev.close();
      const view = await readImage(cow);
      const merged = moo(cow, path.join(dir, 'merged.img'));
      // uml_moo drops the partial last sector (floor(size/512)*512, docs/cow-format.md#uml-tools).
      const mooLen = Math.floor(size / 512) * 512;
      expect(merged.length).toBe(mooLen);
      expect(merged.equals(view.subarray(0, mooLen))).toBe(true);
      expect(view.subarray(size - 700, size).every((x) => x === 0x33)).toBe(true);
      expect(sha256File(b)).toBe(before);
    });
  }

  const layouts: Array<[CraftLayout, number]> = [
    ['v1', 4096],
    ['v2', 4096],
    ['v3', 4096],
    ['v3', 512],
    ['v3', 8],
    ['v3-broken', 4096],
    ['v3-broken', 8],
  ];
  it.each(layouts)('uml_moo merges our crafted %s (align %d) to the driver view', async (layout, alignment) => {
    const dir = tmp.file(`craft-${layout}-${alignment}`);
    mkdirSync(dir);
    const b = createPatternedImage(path.join(dir, 'base.img'), MiB, 11);
    utimesSync(b, MTIME, MTIME);
    const cow = path.join(dir, 'ov.cow');
    writeCraftedCow(cow, {
      layout,
      backingPath: b,
      size: MiB,
      mtime: MTIME,
      alignment,
      garbage: true,
      sectors: { 3: 0xa1, 4: 0xa2, 1000: 0xb1, 2047: 0xc1 },
    });
    const view = await readImage(cow);
    expect(view[3 * 512]).toBe(0xa1);
    expect(view[2047 * 512]).toBe(0xc1);
    expect(moo(cow, path.join(dir, 'merged.img')).equals(view)).toBe(true);
  });

  it.each([
    ['v1', 4096],
    ['v2', 4096],
    ['v3-broken', 8],
    ['v3', 512],
  ] as const)('driver writes into an existing %s (align %d) file in its own layout; uml_moo agrees', async (layout, alignment) => {
    const dir = tmp.file(`own-${layout}-${alignment}`);
    mkdirSync(dir);
    const b = createPatternedImage(path.join(dir, 'base.img'), MiB, 17);
    utimesSync(b, MTIME, MTIME);
    const cow = path.join(dir, 'ov.cow');
    writeCraftedCow(cow, { layout, backingPath: b, size: MiB, mtime: MTIME, alignment, sectors: { 3: 0xa1 } });
    const hdrLen = { v1: 280, v2: 4120, v3: 4128, 'v3-broken': 4136 }[layout];
    const headerBefore = readFileSync(cow).subarray(0, hdrLen);
    const dev = await openImage(cow);
    await dev.write(3 * 512 + 10, Buffer.alloc(20, 0x01)); // RMW over an allocated sector
    await dev.write(64 * 512 + 300, Buffer.alloc(3000, 0x02));
    await dev.writeZeroes(900 * 512, 4096);
    await dev.write(2047 * 512, Buffer.alloc(512, 0x03));
    await dev.flush();
    await dev.close();
    expect(readFileSync(cow).subarray(0, hdrLen).equals(headerBefore)).toBe(true); // layout untouched
    const view = await readImage(cow);
    expect(view[3 * 512]).toBe(0xa1);
    expect(view[3 * 512 + 10]).toBe(0x01);
    expect(moo(cow, path.join(dir, 'merged.img')).equals(view)).toBe(true);
  });

  it.each(['qemu-i386', 'qemu-x86_64'] as const)('uml_moo refuses a crafted %s file (size lands elsewhere); our driver reads it', async (layout) => {
    const dir = tmp.file(`craft-${layout}`);
    mkdirSync(dir);
    const b = createPatternedImage(path.join(dir, 'base.img'), MiB, 13);
    const cow = path.join(dir, 'ov.cow');
    writeCraftedCow(cow, { layout, backingPath: b, size: MiB, mtime: Math.floor(statSync(b).mtimeMs / 1000), sectors: { 7: 0x77 } });
    const r = spawnSync('uml_moo', [cow, path.join(dir, 'merged.img')], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Size mismatch \(0 vs 1048576\)/);
    const view = await readImage(cow);
    expect(view.subarray(7 * 512, 8 * 512).every((x) => x === 0x77)).toBe(true);
    expect(view.subarray(0, 7 * 512).equals(readFileSync(b).subarray(0, 7 * 512))).toBe(true);
  });
});
