/**
 * Multi-GiB sparse images: every command finishes quickly and its peak memory (GNU time's
 * max RSS) stays far below the disk size: memory follows the bitmap (1 MiB here for
 * 4 GiB), not the disk. Commands stream in 4 MiB chunks and skip known-zero ranges.
 */
import { closeSync, openSync, statSync, truncateSync, utimesSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { CLI_PATH } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { MTIME, pokeSectors, run, runOk, v3Geometry } from './tool-helpers.js';

const GiB = 1024 ** 3;
const SIZE = 4 * GiB;
const hasTools = requireTool('uml_mkcow') && requireTool('/usr/bin/time');
const MAX_RSS_KIB = 200 * 1024; // node itself is ~50-80 MiB; the disk is 4 GiB

let tmp: TempDir;
let base: string;
let cow: string;
beforeAll(() => {
  tmp = makeTempDir('tool-large-');
  base = tmp.file('base.img');
  const fd = openSync(base, 'w');
  writeSync(fd, Buffer.alloc(65536, 0x61), 0, 65536, 3 * GiB);
  closeSync(fd);
  truncateSync(base, SIZE);
  utimesSync(base, MTIME, MTIME);
  cow = tmp.file('big.cow');
  if (hasTools) {
    runOk('uml_mkcow', [cow, base]);
    pokeSectors(cow, v3Geometry(SIZE), { 0: 1, 2_000_000: 2, [SIZE / 512 - 1]: 3 });
  }
});
afterAll(() => tmp.cleanup());

/** Run the CLI under GNU time; returns [exit status, max RSS in KiB]. */
function measured(args: string[]): [number | null, number, string] {
  const r = run('/usr/bin/time', ['-f', 'MAXRSS=%M', process.execPath, CLI_PATH, ...args]);
  const m = /MAXRSS=(\d+)/.exec(r.stderr);
  return [r.status, m ? Number(m[1]) : Number.POSITIVE_INFINITY, r.stderr];
}

describe.runIf(hasTools)('4 GiB sparse chain', () => {
  it.each([
    ['info', () => ['info', cow, '--json']],
    ['check', () => ['check', cow, '--json']],
    ['map', () => ['map', cow, '--json']],
    ['commit -o', () => ['commit', cow, '-o', tmp.file('flat.img'), '-q']],
    ['convert -O raw', () => ['convert', cow, '-O', 'raw', tmp.file('conv.img'), '-q']],
    ['convert -O cow', () => ['convert', cow, '-O', 'cow', tmp.file('copy.cow'), '--backing', base, '-q']],
  ] as Array<[string, () => string[]]>)('%s runs in bounded memory', (_name, args) => {
    const [status, rss, stderr] = measured(args());
    expect(status, stderr).toBe(0);
    expect(rss).toBeLessThan(MAX_RSS_KIB);
  });

  it('the flattened outputs are sparse and full-size', () => {
    for (const f of ['flat.img', 'conv.img']) {
      const st = statSync(tmp.file(f));
      expect(st.size).toBe(SIZE);
      expect(st.blocks * 512).toBeLessThan(1024 * 1024);
    }
  });
});
