/**
 * Opening cow files through openImage: every crafted layout reads back the expected
 * merged view; refusals (backing size/mtime, short files, ambiguous or unfit v2 headers)
 * carry clear messages; options (layout, backingFile, ignoreMtime, readOnly) behave.
 */
import { utimesSync, writeFileSync, readFileSync, symlinkSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../src/formats/open-image.js';
import { cowInspection, createCow, inspectCowFile } from '../../src/formats/cow/index.js';
import { expectedView, writeCraftedCow, type CraftLayout, type CraftSpec } from '../helpers/cow-craft.js';
import { createPatternedImage, makeTempDir, sha256File, type TempDir } from '../helpers/images.js';

const MiB = 1024 * 1024;
const MTIME = 1_643_767_322; // 2022-02-02 02:02:02 UTC

let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('cow-open-');
});
afterEach(() => tmp.cleanup());

function base(size = MiB, name = 'base.img'): string {
  const f = createPatternedImage(tmp.file(name), size, 7);
  utimesSync(f, MTIME, MTIME);
  return f;
}

async function readAll(file: string, opts: Parameters<typeof openImage>[1] = {}): Promise<Buffer> {
  const dev = await openImage(file, opts);
  try {
    const out = Buffer.alloc(dev.size);
    // 4 KiB-ish odd chunks so runs are exercised at many boundaries
    for (let o = 0; o < dev.size; o += 12_345) await dev.read(o, out.subarray(o, Math.min(dev.size, o + 12_345)));
    return out;
  } finally {
    await dev.close();
  }
}

describe('cow: crafted layouts read as backing + COW sectors (vector 6/7)', () => {
  const layouts: CraftLayout[] = ['v1', 'v2', 'v3', 'v3-broken', 'qemu-i386', 'qemu-x86_64'];
  for (const layout of layouts) {
    for (const alignment of layout.startsWith('v3') ? [4096, 512, 8] : [4096]) {
      it(`${layout} align ${alignment}`, async () => {
        const b = base(1_000_000);
        const spec: CraftSpec = {
          layout,
          backingPath: b,
          size: 1_000_000,
          mtime: MTIME,
          alignment,
          garbage: true,
          sectors: { 3: 0xa1, 4: 0xa2, 1000: 0xb1, 1952: 0xc1 },
        };
        writeCraftedCow(tmp.file('ov.cow'), spec);
        const got = await readAll(tmp.file('ov.cow'));
        expect(got.length).toBe(1_000_448);
        // v1/v2 floor formula: bitmap_len 244 covers 1952 sectors, so sector 1952 stays backing (docs/cow-format.md#c11).
        const representable = layout === 'v1' || layout === 'v2' ? 1952 : undefined;
        expect(got.equals(expectedView(readFileSync(b), spec, representable))).toBe(true);
        const info = await inspectCowFile(tmp.file('ov.cow'));
        expect(info.layout).toBe(layout);
      });
    }
  }

  it('v2 rounding bug: a bit past bitmap_len is ignored and the sector is not writable (docs/cow-format.md#c11)', async () => {
    const b = base(2049 * 512);
    const spec: CraftSpec = { layout: 'v2', backingPath: b, size: 2049 * 512, mtime: MTIME, sectors: { 2040: 0x11 } };
    const c = writeCraftedCow(tmp.file('ov.cow'), spec);
    // Put a bit and data for sector 2048 where UML would (padding byte 256): must be ignored.
    const raw = readFileSync(tmp.file('ov.cow'));
    raw[c.bitmapOffset + 256] = 0x01;
    raw.fill(0x22, c.dataOffset + 2048 * 512, c.dataOffset + 2049 * 512);
    writeFileSync(tmp.file('ov.cow'), raw);
    const got = await readAll(tmp.file('ov.cow'));
    expect(got.equals(expectedView(readFileSync(b), spec))).toBe(true);
    const dev = await openImage(tmp.file('ov.cow'));
    try {
      await expect(dev.write(2048 * 512, Buffer.alloc(512, 1))).rejects.toMatchObject({ code: 'EIO', message: expect.stringMatching(/sector 2048/) });
      await dev.write(2047 * 512, Buffer.alloc(512, 3)); // representable: fine
    } finally {
      await dev.close();
    }
  });
});

describe('cow: refusals', () => {
  it('size mismatch with UML wording', async () => {
    const b = base();
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: b, size: MiB + 512, mtime: MTIME });
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/Size mismatch \(1049088 vs 1048576\) of COW header vs backing file/);
  });

  it('mtime mismatch with UML wording; ignoreMtime opens anyway', async () => {
    const b = base();
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: b, size: MiB, mtime: MTIME });
    utimesSync(b, MTIME + 5, MTIME + 5);
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/mtime mismatch \(1643767322 vs 1643767327\) of COW header vs backing file/);
    const dev = await openImage(tmp.file('ov.cow'), { ignoreMtime: true });
    expect(dev.size).toBe(MiB);
    await dev.close();
  });

  it('missing backing file', async () => {
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: tmp.file('nope.img'), size: MiB, mtime: MTIME });
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/Couldn't stat backing file .*nope\.img.*ENOENT/);
  });

  it('file shorter than the data area', async () => {
    const b = base();
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: b, size: MiB, mtime: MTIME, truncateTo: 9000 });
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/file length 9000 is shorter than the v3 data area start 12288/);
  });

  it('file shorter than the header', async () => {
    const b = base();
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: b, size: MiB, mtime: MTIME, truncateTo: 2000 });
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/short header: 2000 bytes/);
  });

  it('alignment 0 through openImage names the file and field', async () => {
    const b = base();
    const c = writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: b, size: MiB, mtime: MTIME });
    const raw = Buffer.from(c.bytes);
    raw.writeUInt32BE(0, 24);
    writeFileSync(tmp.file('ov.cow'), raw);
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/ov\.cow: alignment 0/);
  });

  it('a version-2 file that fits no layout is refused with every candidate named', async () => {
    const b = base();
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v2', backingPath: b, size: 2 * MiB, mtime: MTIME });
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/fits no layout: v2 \(.*Size mismatch.*\); qemu-i386 \(.*\); qemu-x86_64 \(/);
  });

  it('an ambiguous version-2 file is refused; layout chooses', async () => {
    const b = base();
    const spec: CraftSpec = { layout: 'v2', backingPath: b, size: MiB, mtime: MTIME, sectors: { 5: 0x55 } };
    const c = writeCraftedCow(tmp.file('ov.cow'), spec);
    const raw = Buffer.from(c.bytes);
    // Make the QEMU i386 reading plausible too (those bytes are after the v2 path's NUL).
    raw.writeBigUInt64BE(BigInt(MiB), 1036);
    raw.writeUInt32BE(512, 1044);
    writeFileSync(tmp.file('ov.cow'), raw);
    await expect(openImage(tmp.file('ov.cow'))).rejects.toThrow(/ambiguous version-2 COW header: candidates v2, qemu-i386/);
    const got = await readAll(tmp.file('ov.cow'), { layout: 'v2' });
    expect(got.equals(expectedView(readFileSync(b), spec))).toBe(true);
  });

  it('an unknown forced layout', async () => {
    const b = base();
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: b, size: MiB, mtime: MTIME });
    await expect(openImage(tmp.file('ov.cow'), { layout: 'v9' })).rejects.toThrow(/layout v9 unknown/);
  });
});

describe('cow: backing paths and options', () => {
  it('relative stored path resolves against the CWD for UML layouts, the image dir for QEMU', async () => {
    const b = base();
    mkdirSync(tmp.file('sub'));
    // UML: relative to CWD (tmp.path/..), so store "<tmpname>/base.img" and chdir to parent.
    const parent = path.dirname(tmp.path);
    const rel = path.join(path.basename(tmp.path), 'base.img');
    writeCraftedCow(tmp.file('sub/uml.cow'), { layout: 'v3', backingPath: rel, size: MiB, mtime: MTIME });
    writeCraftedCow(tmp.file('sub/q.cow'), { layout: 'qemu-x86_64', backingPath: '../base.img', size: MiB, mtime: 0 });
    const old = process.cwd();
    process.chdir(parent);
    try {
      const dev = await openImage(tmp.file('sub/uml.cow'));
      expect(cowInspection(dev)!.backingFile).toEqual({ stored: rel, resolved: b });
      await dev.close();
      const q = await openImage(tmp.file('sub/q.cow'));
      expect(cowInspection(q)!.backingFile.resolved).toBe(b);
      await q.close();
    } finally {
      process.chdir(old);
    }
  });

  it('backingFile overrides the stored path but must still validate', async () => {
    const b = base();
    const other = base(MiB, 'other.img');
    writeCraftedCow(tmp.file('ov.cow'), { layout: 'v3', backingPath: tmp.file('gone.img'), size: MiB, mtime: MTIME, sectors: { 0: 1 } });
    const got = await readAll(tmp.file('ov.cow'), { backingFile: other });
    expect(got.subarray(512).equals(readFileSync(b).subarray(512))).toBe(true);
    utimesSync(other, 5, 5);
    await expect(openImage(tmp.file('ov.cow'), { backingFile: other })).rejects.toThrow(/mtime mismatch/);
  });

  it('readOnly opens a read-only COW file and refuses writes', async () => {
    const b = base();
    await createCow(tmp.file('ov.cow'), { backingFile: b });
    const dev = await openImage(tmp.file('ov.cow'), { readOnly: true });
    expect(dev.capabilities.writable).toBe(false);
    await expect(dev.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EPERM' });
    await dev.close();
  });
});

describe('createCow', () => {
  it('writes a v3 header like uml_mkcow, sparse, data_offset+size long', async () => {
    const b = base(1_000_000);
    await createCow(tmp.file('ov.cow'), { backingFile: b });
    const raw = readFileSync(tmp.file('ov.cow'));
    expect(raw.length).toBe(12288 + 1_000_000);
    expect(raw.subarray(0, 32).toString('hex')).toBe(
      '4f4f4f4d00000003' + MTIME.toString(16).padStart(8, '0') + '00000000000f4240' + '00000200' + '00001000' + '00000000',
    );
    expect(raw.toString('utf8', 32, 32 + b.length + 1)).toBe(`${b}\0`);
    expect(raw.subarray(32 + b.length).every((x) => x === 0)).toBe(true);
  });

  it('refuses to overwrite without force, and an empty backing path', async () => {
    const b = base();
    await createCow(tmp.file('ov.cow'), { backingFile: b });
    await expect(createCow(tmp.file('ov.cow'), { backingFile: b })).rejects.toThrow(/EEXIST|exists/);
    await createCow(tmp.file('ov.cow'), { backingFile: b, force: true });
    await expect(createCow(tmp.file('x.cow'), { backingFile: '' })).rejects.toThrow(/empty/);
  });

  it('absolutizes like uml_mkcow: directory symlinks resolved, final symlink kept', async () => {
    const b = base();
    mkdirSync(tmp.file('real'));
    symlinkSync(tmp.file('real'), tmp.file('dirlink'));
    symlinkSync(b, tmp.file('real/link.img'));
    await createCow(tmp.file('ov.cow'), { backingFile: tmp.file('dirlink/link.img') });
    const info = await inspectCowFile(tmp.file('ov.cow'));
    expect(info.header.backingFile).toBe(path.join(tmp.path, 'real', 'link.img'));
  });

  it('refuses a backing mtime outside 32 bits unless forced (docs/cow-format.md#c3)', async () => {
    const b = base();
    utimesSync(b, 4_417_977_600, 4_417_977_600); // 2110-01-01
    await expect(createCow(tmp.file('ov.cow'), { backingFile: b })).rejects.toThrow(/mtime 4417977600 does not fit/);
    await createCow(tmp.file('ov.cow'), { backingFile: b, force: true });
    const info = await inspectCowFile(tmp.file('ov.cow'), { validateBacking: false });
    expect(info.header.mtime).toBe(0x0754fd00);
  });

  it('never writes to the backing file', async () => {
    const b = base();
    const before = sha256File(b);
    await createCow(tmp.file('ov.cow'), { backingFile: b });
    const dev = await openImage(tmp.file('ov.cow'));
    await dev.write(100, Buffer.alloc(5000, 9));
    await dev.writeZeroes(70_000, 9000);
    await dev.trim(200_000, 4096);
    await dev.flush();
    await dev.close();
    expect(sha256File(b)).toBe(before);
  });
});
