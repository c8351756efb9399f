/**
 * openChecked judges what it OPENED, not the name it was given (issue 26, items 8 and 9):
 * a symlink flipped by another process between "check" and "open" must never hand out a
 * descriptor on a file outside --allow-path, nor one on procfs. The flipper is a real
 * separate process (python3 renaming symlinks atomically as fast as it can), the opens
 * are real opens on the real filesystem; each test also asserts that both outcomes
 * actually happened, so a flipper that never raced cannot make the test pass.
 */
import { mkdirSync, openSync, closeSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { filesystemOf, openChecked, OpenGuard } from '../../src/block/open-guard.js';
import { nativeFs } from '../../src/block/native-fs.js';
import { makeTempDir } from '../helpers/images.js';
import { flipping, flipSymlink } from '../helpers/symlink-flipper.js';

const PROC_SUPER_MAGIC = 0x9fa0;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());



interface Tally {
  opened: number;
  refused: number;
  /** Opens that handed out a descriptor on the forbidden file. */
  escaped: number;
}

/** Open `link` `rounds` times while it flips; count the descriptors that are `forbidden`. */
async function race(link: string, rounds: number, guard: OpenGuard | undefined, forbidden: (st: { dev: number; ino: number }) => boolean): Promise<Tally> {
  const t: Tally = { opened: 0, refused: 0, escaped: 0 };
  for (let i = 0; i < rounds; i++) {
    try {
      const fh = await openChecked(link, { writable: false, what: 'backing file', referenced: true, guard });
      const st = await fh.stat();
      if (forbidden(st)) t.escaped++;
      t.opened++;
      await fh.close();
    } catch (err) {
      // ENOENT cannot happen (rename is atomic); anything but a refusal is a bug.
      expect((err as Error).message).toMatch(/outside the allowed directories|procfs|changed while/);
      t.refused++;
    }
  }
  return t;
}

describe('--allow-path is checked on the real path of what was opened', () => {
  const allowed = tmp.file('allowed');
  const outside = tmp.file('outside');
  mkdirSync(allowed);
  mkdirSync(outside);
  writeFileSync(path.join(allowed, 'inside.raw'), Buffer.alloc(4096, 1));
  writeFileSync(path.join(outside, 'secret.raw'), Buffer.alloc(4096, 2));
  const secret = statSync(path.join(outside, 'secret.raw'));

  it('a symlink inside the allowed directory that points outside is refused, naming where it resolves', async () => {
    const link = path.join(allowed, 'link.raw');
    symlinkSync('../outside/secret.raw', link);
    const guard = new OpenGuard([allowed]);
    await expect(openChecked(link, { writable: false, what: 'backing file', referenced: true, guard })).rejects.toThrow(
      `backing file "${link}" (resolves to "${path.join(outside, 'secret.raw')}") (named in an image header) is outside the allowed directories`,
    );
    // One that stays inside is fine.
    const good = path.join(allowed, 'good.raw');
    symlinkSync('inside.raw', good);
    const fh = await openChecked(good, { writable: false, what: 'backing file', referenced: true, guard });
    expect((await fh.stat()).ino).toBe(statSync(path.join(allowed, 'inside.raw')).ino);
    await fh.close();
  });

  it('an allowed directory that is itself a symlink is compared by its real path', async () => {
    const alias = tmp.file('alias');
    symlinkSync(allowed, alias);
    const guard = new OpenGuard([alias]);
    const fh = await openChecked(path.join(allowed, 'inside.raw'), { writable: false, what: 'backing file', referenced: true, guard });
    await fh.close();
    await expect(openChecked(path.join(outside, 'secret.raw'), { writable: false, what: 'backing file', referenced: true, guard })).rejects.toThrow(/outside the allowed/);
  });

  it('a symlink flipping between inside and outside never yields a descriptor on the outside file', async () => {
    const link = path.join(allowed, 'flip.raw');
    const flipper = flipSymlink(link, 'inside.raw', '../outside/secret.raw');
    try {
      await flipping(link, '../outside/secret.raw');
      const t = await race(link, 1500, new OpenGuard([allowed]), (st) => st.dev === secret.dev && st.ino === secret.ino);
      expect(t.escaped).toBe(0);
      expect(t.opened).toBeGreaterThan(0);
      expect(t.refused).toBeGreaterThan(0);
    } finally {
      flipper.kill('SIGKILL');
    }
  });
});

describe('procfs is refused by the opened descriptor, not by the name', () => {
  const dir = tmp.file('procflip');
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'plain.raw'), Buffer.alloc(4096, 3));
  const proc = statSync('/proc/self/environ');

  it('filesystemOf names procfs for a /proc descriptor, with the addon and with its fallback', async () => {
    const fd = openSync('/proc/self/environ', 'r');
    const plain = openSync(path.join(dir, 'plain.raw'), 'r');
    try {
      for (const native of nativeFs?.fsType ? [nativeFs, undefined] : [undefined]) {
        expect(await filesystemOf(fd, '/nonexistent', native)).toBe(PROC_SUPER_MAGIC);
        // The name is not consulted when the descriptor answers: a procfs name, a plain fd.
        expect(await filesystemOf(plain, '/proc/self/environ', native)).not.toBe(PROC_SUPER_MAGIC);
      }
    } finally {
      closeSync(fd);
      closeSync(plain);
    }
  });

  it('a symlink flipping between a regular file and /proc/self/environ never yields a procfs descriptor', async () => {
    const link = path.join(dir, 'flip.raw');
    const flipper = flipSymlink(link, 'plain.raw', '/proc/self/environ');
    try {
      await flipping(link, '/proc/self/environ');
      const t = await race(link, 1500, undefined, (st) => st.dev === proc.dev);
      expect(t.escaped).toBe(0);
      expect(t.opened).toBeGreaterThan(0);
      expect(t.refused).toBeGreaterThan(0);
    } finally {
      flipper.kill('SIGKILL');
    }
  });
});
