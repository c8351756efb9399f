/**
 * `cownbd demo` (what `npm start` runs): a cow overlay over a 64 MiB sparse raw base in
 * $XDG_CACHE_HOME/cownbd/demo, served with ready-to-paste client commands. Writes go to
 * the overlay (allocation depth 1), the base never changes (depth 2 where it shows
 * through), the overlay persists across runs, `--reset` throws it away, and a stale
 * overlay (base re-created) is replaced.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync, utimesSync } from 'node:fs';
import path from 'node:path';
import { makeTempDir, sha256File } from '../helpers/images.js';
import { CLI_PATH, assertBuilt, nbdPython, requireNbdPython } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const hasNbd = requireNbdPython();

interface Demo {
  proc: ChildProcess;
  out: string;
  port: number;
  uri: string;
  stop(): Promise<number | null>;
}

async function startDemo(cache: string, extra: string[] = []): Promise<Demo> {
  assertBuilt();
  const proc = spawn(process.execPath, [CLI_PATH, 'demo', '-p', '0', ...extra], {
    env: { ...process.env, XDG_CACHE_HOME: cache },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`demo did not start: ${out}\n${err}`));
    }, 20_000);
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (/press Ctrl-C/.test(out)) {
        clearTimeout(t);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(t);
      reject(new Error(`demo exited (${code}): ${out}\n${err}`));
    });
  });
  const m = /^cownbd: listening on nbd:\/\/127\.0\.0\.1:(\d+)\/$/m.exec(out);
  if (!m) throw new Error(`no listening line in: ${out}`);
  const port = Number(m[1]);
  return {
    proc,
    out,
    port,
    uri: `nbd://127.0.0.1:${port}`,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.kill('SIGTERM');
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** [offset, length, depth] extents of qemu:allocation-depth over the whole disk. */
async function depthMap(uri: string): Promise<Array<[number, number, number]>> {
  const out = await nbdPython(
    `
import nbd, json
h = nbd.NBD()
h.add_meta_context("qemu:allocation-depth")
h.connect_uri(URI)
size = h.get_size()
res = []
off = 0
while off < size:
    got = []
    def cb(ctx, o, entries, err):
        if ctx == "qemu:allocation-depth":
            got.extend(entries)
        return 0
    h.block_status(min(size - off, 1 << 30), off, cb)
    for i in range(0, len(got), 2):
        res.append([off, got[i], got[i + 1]])
        off += got[i]
print(json.dumps({"map": res, "data": list(h.pread(4, 0))}))
h.shutdown()
`,
    { URI: uri },
    30_000,
  );
  return (JSON.parse(out.trim().split('\n').pop()!) as { map: Array<[number, number, number]> }).map;
}

function depthAt(map: Array<[number, number, number]>, offset: number): number | undefined {
  return map.find(([o, l]) => offset >= o && offset < o + l)?.[2];
}

describe('cownbd demo', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('serves a cow overlay over the demo base and prints the URI and client commands', async () => {
    const cache = tmp.file('cache1');
    const dir = path.join(cache, 'cownbd', 'demo');
    const demo = await startDemo(cache);
    let code: number | null;
    try {
      const u = demo.uri;
      for (const line of [
        `  nbdinfo ${u}`,
        `  nbdinfo --map=qemu:allocation-depth ${u}`,
        `  qemu-img info ${u}`,
        `  qemu-io -f raw -c 'write -P 0x55 0 64k' ${u}`,
      ]) {
        expect(demo.out.split('\n'), line).toContain(line);
      }
      const base = path.join(dir, 'demo-base.raw');
      const overlay = path.join(dir, 'demo-overlay.cow');
      expect(demo.out).toContain(overlay);
      expect(statSync(base).size).toBe(64 * MiB);
      // The overlay is a UML v3 cow naming the base ("OOOM" magic, version 3).
      const head = readFileSync(overlay).subarray(0, 4096 + 64);
      expect(head.readUInt32BE(0)).toBe(0x4f4f4f4d);
      expect(head.readUInt32BE(4)).toBe(3);
      expect(head.toString('latin1', 32, 32 + base.length)).toBe(base);
      const baseHash = sha256File(base);

      if (requireTool('nbdinfo')) {
        const info = spawnSync('nbdinfo', ['--size', u], { encoding: 'utf8', timeout: 20_000 });
        expect(info.stdout.trim()).toBe(String(64 * MiB));
      }
      // The printed qemu-io command, run as printed: a client write through NBD.
      if (requireTool('qemu-io')) {
        const w = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 64k', u], { encoding: 'utf8', timeout: 30_000 });
        expect(w.status, w.stderr).toBe(0);
        expect(w.stdout).toMatch(/wrote 65536\/65536 bytes at offset 0/);
      }
      if (hasNbd) {
        // A second write from libnbd (also covers machines without qemu-io).
        await nbdPython(
          `
import nbd
h = nbd.NBD(); h.connect_uri(URI)
h.pwrite(b"\\x55" * 65536, 0)
h.pwrite(b"\\xaa" * 4096, 32 << 20)
h.flush(); h.shutdown()
`,
          { URI: u },
        );
        const map = await depthMap(u);
        expect(depthAt(map, 0)).toBe(1); // written: the overlay holds it
        expect(depthAt(map, 32 * MiB)).toBe(1);
        expect(depthAt(map, 1 * MiB)).toBe(2); // untouched: the base shows through
        expect(depthAt(map, 64 * MiB - 1)).toBe(2);
        expect(map.reduce((n, [, l]) => n + l, 0)).toBe(64 * MiB);
      }
      // The base never changes; the overlay file now holds the data.
      expect(sha256File(base)).toBe(baseHash);
      expect(readFileSync(base).subarray(0, 16).toString('latin1')).toBe('cownbd demo disk');
      const dataOffset = statSync(overlay).size - 64 * MiB;
      const ov = readFileSync(overlay);
      expect(ov.subarray(dataOffset, dataOffset + 65536).every((b) => b === 0x55)).toBe(true);
    } finally {
      code = await demo.stop();
    }
    expect(code).toBe(0);
  });

  it.runIf(hasNbd)('keeps the overlay across runs, discards it with --reset, and replaces a stale one', async () => {
    const cache = tmp.file('cache2');
    const dir = path.join(cache, 'cownbd', 'demo');
    const overlay = path.join(dir, 'demo-overlay.cow');
    const write = (uri: string) =>
      nbdPython(`import nbd\nh = nbd.NBD(); h.connect_uri(URI)\nh.pwrite(b"\\x77" * 4096, 4 << 20); h.flush(); h.shutdown()`, { URI: uri });

    let demo = await startDemo(cache);
    expect(demo.out).toMatch(/new cow overlay/);
    await write(demo.uri);
    expect(await demo.stop()).toBe(0);

    // Second run: the same overlay, the write is still there (depth 1).
    demo = await startDemo(cache);
    try {
      expect(demo.out).toMatch(/existing cow overlay/);
      expect(depthAt(await depthMap(demo.uri), 4 * MiB)).toBe(1);
    } finally {
      expect(await demo.stop()).toBe(0);
    }

    // --reset: a fresh overlay, the base shows through again.
    demo = await startDemo(cache, ['--reset']);
    try {
      expect(demo.out).toMatch(/new cow overlay/);
      expect(depthAt(await depthMap(demo.uri), 4 * MiB)).toBe(2);
      await write(demo.uri);
    } finally {
      expect(await demo.stop()).toBe(0);
    }

    // The base "changed" (its mtime moved): the old overlay no longer validates and
    // is replaced, with a warning, instead of the demo failing.
    const base = path.join(dir, 'demo-base.raw');
    const t = new Date(Date.now() - 3600_000);
    utimesSync(base, t, t);
    demo = await startDemo(cache);
    try {
      expect(demo.out).toMatch(/new cow overlay/);
      expect(existsSync(overlay)).toBe(true);
      expect(depthAt(await depthMap(demo.uri), 4 * MiB)).toBe(2);
    } finally {
      expect(await demo.stop()).toBe(0);
    }
  });
});
