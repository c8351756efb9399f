/**
 * Faults under a running server (issue 15): a base truncated while served must give EIO,
 * logged with the path and sizes, never zeros — and a partial write must not copy such
 * zeros into the overlay.
 */
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { PRELUDE, lastJson } from './py-prelude.js';

const MiB = 1024 * 1024;
const hasNbd = requireNbdPython();

describe.runIf(hasNbd)('base truncated while serving (defect 3)', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('a short read inside the known size is EIO with path and sizes, never zero-fill', async () => {
    const base = createPatternedImage(tmp.file('base.raw'), 4 * MiB, 9);
    const original = readFileSync(base);
    const srv = await startServer(['--base', base, '--overlay-dir', tmp.file('ov')]);
    try {
      const script =
        PRELUDE +
        `
import os, time
h = conn()
r = {"before": h.pread(4096, 3 << 20) == ORIG_AT_3M}
os.truncate(BASE, 1 << 20)
r["read"] = err_of(lambda: h.pread(4096, 3 << 20))
r["write"] = err_of(lambda: h.pwrite(b"partial", (3 << 20) + 10))
with open(BASE, "r+b") as f:
    f.write(open(BACKUP, "rb").read())
r["after"] = h.pread(4096, 3 << 20) == ORIG_AT_3M
h.flush()
h.shutdown()
out(r)
`;
      const backup = tmp.file('backup.raw');
      writeFileSync(backup, original);
      const expected = `bytes.fromhex(${JSON.stringify(original.subarray(3 * MiB, 3 * MiB + 4096).toString('hex'))})`;
      const r = lastJson(await nbdPython(script.replaceAll('ORIG_AT_3M', expected), { URI: srv.uri('vm1'), BASE: base, BACKUP: backup }));
      expect(r).toEqual({ before: true, read: 'EIO', write: 'EIO', after: true });
      const log = srv.stderr();
      expect(log).toContain(base);
      expect(log).toMatch(/is 1048576 bytes now, was 4194304 when opened/);
    } finally {
      await srv.stop();
    }
    truncateSync(base, 4 * MiB);
  });
});
