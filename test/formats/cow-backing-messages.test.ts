/**
 * Backing-file errors name a path taken from the cow header; a crafted header can put any
 * byte there. The image fuzzer found a newline in such a path splitting the error over two
 * lines: messages quote the path so every error stays one line (and normal paths read as before).
 */
import { describe, expect, it } from 'vitest';
import { checkBacking, statBacking } from '../../src/formats/cow/index.js';
import type { CowHeader } from '../../src/formats/cow/index.js';

describe('cow backing-file messages', () => {
  it('a path with a newline stays on one line, escaped', async () => {
    const err = await statBacking('/nonexistent/dir/a\nb.raw').then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toBe(`Couldn't stat backing file "/nonexistent/dir/a\\nb.raw": ENOENT`);
    expect(err?.message).not.toContain('\n');
  });

  it('ordinary paths read exactly as UML prints them', () => {
    const h = { layout: 'v3', size: 100, mtime: 5 } as unknown as CowHeader;
    expect(() => checkBacking(h, { size: 200, mtime: 5 }, '/srv/base.img')).toThrow(
      'Size mismatch (100 vs 200) of COW header vs backing file "/srv/base.img"',
    );
    expect(() => checkBacking(h, { size: 100, mtime: 6 }, '/srv/x\ty.img')).toThrow(/backing file "\/srv\/x\\ty\.img" \(override/);
  });
});
