/**
 * A separate process that flips a symlink between two targets as fast as it can (atomic
 * rename of a fresh link over the name), for races between "check a name" and "open it"
 * (src/block/open-guard.ts). Used by the open-guard unit test and the reload race test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readlinkSync, symlinkSync } from 'node:fs';

const FLIPPER = `
import os, sys
link, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
tmp = link + '.flip'
i = 0
while True:
    try: os.unlink(tmp)
    except FileNotFoundError: pass
    os.symlink(a if i % 2 == 0 else b, tmp)
    os.replace(tmp, link)
    i += 1
`;

/** Point `link` at `a` (unless it exists already) and start flipping it between `a` and `b`; the caller kills it. */
export function flipSymlink(link: string, a: string, b: string, create = true): ChildProcess {
  if (create) symlinkSync(a, link);
  return spawn('python3', ['-c', FLIPPER, link, a, b], { stdio: 'ignore' });
}

/** Resolves once the flipper has really pointed `link` at `b` (python starts slowly on a busy machine). */
export async function flipping(link: string, b: string): Promise<void> {
  const end = Date.now() + 30_000;
  for (;;) {
    try {
      if (readlinkSync(link) === b) return;
    } catch {
      // mid-replace: try again
    }
    if (Date.now() > end) throw new Error(`the flipper never pointed ${link} at ${b}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
