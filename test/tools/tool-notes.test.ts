/**
 * The image tools as library functions (exported from src/index.ts) write nothing to the
 * process's stderr: what the operator should read comes to the caller's ToolContext.notify
 * (the CLI writes it to stderr, so `cownbd convert` still prints it). Case: converting into
 * a cow overlay over a cow backing, whose header cannot record the backing format.
 */
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createImage } from '../../src/formats/open-image.js';
import { runConvert } from '../../src/tools/convert.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { cli } from './tool-helpers.js';

describe('image tools report through ToolContext.notify', () => {
  const tmp = makeTempDir('tool-notes-');
  afterAll(() => tmp.cleanup());

  it('runConvert hands its note to notify and writes nothing to stderr; the CLI prints it', async () => {
    const base = createRawImage(tmp.file('base.raw'), 1024 * 1024, [[0, 4096]]);
    await createImage('cow', tmp.file('mid.cow'), { backing: base });
    const lines: string[] = [];
    const stderr = vi.spyOn(process.stderr, 'write');
    try {
      await runConvert(tmp.file('mid.cow'), tmp.file('top.cow'), { outputFormat: 'cow', outBacking: tmp.file('mid.cow'), outBackingFormat: 'cow' }, {
        interrupt: { check: () => {} },
        makeProgress: () => ({ update: () => {}, finish: () => {} }),
        notify: (line) => lines.push(line),
      });
      expect(stderr).not.toHaveBeenCalled();
    } finally {
      stderr.mockRestore();
    }
    expect(lines).toEqual(['note: cow headers cannot record the backing format; pass --backing-format cow when opening']);
    const r = cli(['convert', '-O', 'cow', '-B', tmp.file('mid.cow'), '-F', 'cow', tmp.file('mid.cow'), tmp.file('top2.cow')]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('note: cow headers cannot record the backing format; pass --backing-format cow when opening');
  });
});
