/**
 * The cow driver behind the real NBD server (dist/cli/main.js serve) with real clients:
 *   - a uml_mkcow overlay is written over NBD (python3-libnbd: partial-sector writes,
 *     zeroes, trim, flush); uml_moo's merge equals what the server served;
 *   - crash ordering: the server is SIGKILLed while a client writes with periodic
 *     flushes. Every write acknowledged before a completed FLUSH must survive, and no
 *     sector may read data that was never written (each sector is either its old
 *     contents or its complete new contents).
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, utimesSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createPatternedImage, createRawImage, makeTempDir, sha256File, type TempDir, readImage } from '../helpers/images.js';
import { findNbdPython, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const ready = requireTool('uml_mkcow') && requireTool('uml_moo') && requireNbdPython();
const MiB = 1024 * 1024;
const MTIME = 1_643_767_322;

let tmp: TempDir;
beforeEach(() => {
  tmp = makeTempDir('uml-nbd-');
});
afterEach(() => tmp.cleanup());


describe.runIf(ready)('cow over NBD', () => {
  it('uml_mkcow overlay written through the server merges (uml_moo) to what the server reads', async () => {
    const base = createPatternedImage(tmp.file('base.img'), 2 * MiB, 31);
    utimesSync(base, MTIME, MTIME);
    const before = sha256File(base);
    const cow = tmp.file('ov.cow');
    execFileSync('uml_mkcow', [cow, base]);
    const srv = await startServer([cow], { unix: true });
    try {
      const out = await nbdPython(
        `
import nbd, hashlib
h = nbd.NBD()
h.connect_uri(URI)
assert h.get_size() == 2 * 1024 * 1024
h.pwrite(b'\\xaa' * 700, 1000)
h.pwrite(b'\\xbb' * 65536, 65536)
h.pwrite(b'\\xcc' * 3, 4095)
h.zero(10000, 300000)
h.trim(4096 * 100, 8192)
h.pwrite(b'\\xdd' * 512, 2 * 1024 * 1024 - 512, nbd.CMD_FLAG_FUA)
h.flush()
data = h.pread(2 * 1024 * 1024, 0)
print(hashlib.sha256(data).hexdigest())
h.shutdown()
`,
        { URI: srv.uri() },
      );
      await srv.stop();
      const served = out.trim();
      execFileSync('uml_moo', [cow, tmp.file('merged.img')]);
      const merged = readFileSync(tmp.file('merged.img'));
      const { createHash } = await import('node:crypto');
      expect(createHash('sha256').update(merged).digest('hex')).toBe(served);
      expect(createHash('sha256').update(await readImage(cow)).digest('hex')).toBe(served);
      expect(merged[1000]).toBe(0xaa);
      expect(sha256File(base)).toBe(before);
    } finally {
      await srv.stop('SIGKILL');
    }
  });

  it('SIGKILL during writes: flushed writes survive, no sector holds unwritten data', async () => {
    const size = 256 * MiB; // room for more writes than can finish before the kill
    const base = createRawImage(tmp.file('base.img'), size, [[0, 4 * MiB]], 41);
    utimesSync(base, MTIME, MTIME);
    const cow = tmp.file('ov.cow');
    execFileSync('uml_mkcow', [cow, base]);
    const srv = await startServer([cow], { unix: true });
    // Write i owns region [i*8192, (i+1)*8192): fill (i % 251) + 1 at off/len below.
    // Up to 8 writes are in flight (aio); a flush follows every 16 writes and, once it
    // completes, the client prints how many writes it covers.
    const script = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(URI)
def region(i):
    off = i * 8192 + (100 if i % 3 == 0 else 0)
    ln = 4096 if i % 2 == 0 else 5000
    return off, ln
try:
    i = 0
    while i < 32000:
        cookies = []
        for k in range(16):
            off, ln = region(i + k)
            cookies.append(h.aio_pwrite(bytes([((i + k) % 251) + 1]) * ln, off))
            while h.aio_in_flight() >= 8:
                h.poll(-1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for c in cookies:
            h.aio_command_completed(c)
        i += 16
        h.flush()
        print('FLUSHED', i, flush=True)
    print('DONE', flush=True)
except Exception as e:
    print('ERROR', e, flush=True)
`;
    // Kill -9 as soon as a few flushes have completed (watching the writer's output rather
    // than sleeping: a fixed delay let a fast server finish every write first).
    const res = await new Promise<{ stdout: string; stderr: string }>((resolve) => {
      const prelude = `URI = ${JSON.stringify(srv.uri())}\n`;
      const py = spawn(findNbdPython()!, ['-c', prelude + script], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      let killed = false;
      const timer = setTimeout(() => py.kill('SIGKILL'), 60_000);
      py.stdout.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
        if (!killed && /FLUSHED (\d{3,})/.test(stdout) && Number(/.*FLUSHED (\d+)/s.exec(stdout)![1]) >= 160) {
          killed = true;
          srv.proc.kill('SIGKILL');
        }
      });
      py.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      py.once('close', () => {
        clearTimeout(timer);
        resolve({ stdout, stderr });
      });
    });
    await srv.stop('SIGKILL');
    const flushed = Math.max(0, ...[...res.stdout.matchAll(/FLUSHED (\d+)/g)].map((m) => Number(m[1])));
    expect(flushed, res.stdout + res.stderr).toBeGreaterThan(0);
    expect(res.stdout).not.toContain('DONE'); // the kill really interrupted the writer

    const view = await readImage(cow);
    const backing = readFileSync(base);
    const attempted = flushed + 16 + 16; // generous bound on writes that may have reached the server
    for (let i = 0; i < attempted && i * 8192 < size; i++) {
      const off = i * 8192 + (i % 3 === 0 ? 100 : 0);
      const len = i % 2 === 0 ? 4096 : 5000;
      const fill = (i % 251) + 1;
      const after = Buffer.from(backing.subarray(i * 8192, (i + 1) * 8192));
      after.fill(fill, off - i * 8192, off - i * 8192 + len);
      const got = view.subarray(i * 8192, (i + 1) * 8192);
      const old = backing.subarray(i * 8192, (i + 1) * 8192);
      if (i < flushed) {
        if (!got.equals(after)) throw new Error(`write ${i} was flushed but did not survive`);
        continue;
      }
      for (let s = 0; s < 16; s++) {
        const g = got.subarray(s * 512, (s + 1) * 512);
        if (!g.equals(old.subarray(s * 512, (s + 1) * 512)) && !g.equals(after.subarray(s * 512, (s + 1) * 512))) {
          throw new Error(`write ${i}, sector ${s}: neither old nor new contents after the crash`);
        }
      }
    }
    // Everything past the writes is untouched backing.
    const tailStart = attempted * 8192;
    expect(view.subarray(tailStart).equals(backing.subarray(tailStart))).toBe(true);
  });
});
