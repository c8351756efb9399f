/**
 * Hostile image headers (issue 15, defects 12 and 13): add-cow backing cycles, FIFOs and
 * procfs files named in headers, add-cow images that cannot be opened, and a crafted
 * add-cow whose image file is another export's golden base. Each ends in a one-line
 * error within seconds; nothing writes to a base.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeCraftedAddCow } from '../helpers/add-cow-craft.js';
import { writeCraftedCow } from '../helpers/cow-craft.js';
import { createPatternedImage, makeTempDir, sha256File } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { PRELUDE } from './py-prelude.js';

const MiB = 1024 * 1024;
const hasNbd = requireNbdPython();

function cownbd(args: string[], timeoutMs = 20_000): { status: number | null; out: string; ms: number } {
  const t = Date.now();
  const r = spawnSync(process.execPath, [CLI_PATH, ...args], { encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, out: `${r.stdout}${r.stderr}`, ms: Date.now() - t };
}

describe('hostile image headers (defect 12)', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const dir = tmp.path;
  writeFileSync(path.join(dir, 'a.img'), Buffer.alloc(MiB));
  writeFileSync(path.join(dir, 'b.img'), Buffer.alloc(MiB));
  // A → B → A: each add-cow names the other as its add-cow backing.
  writeCraftedAddCow(path.join(dir, 'A.add-cow'), { imageName: 'a.img', backingName: 'B.add-cow', backingFormat: 'add-cow', virtualSize: MiB });
  writeCraftedAddCow(path.join(dir, 'B.add-cow'), { imageName: 'b.img', backingName: 'A.add-cow', backingFormat: 'add-cow', virtualSize: MiB });

  it('a backing cycle is refused by serve, info --backing-chain and check, quickly', () => {
    const a = path.join(dir, 'A.add-cow');
    const info = cownbd(['info', '--backing-chain', a]);
    expect(info.status, info.out).not.toBe(0);
    expect(info.out).toMatch(/cycle|loops back/);
    const check = cownbd(['check', a]);
    expect(check.status, check.out).toBe(2);
    expect(check.out).toMatch(/cycle|loops back/);
    const serve = cownbd(['serve', a, '-p', '0']);
    expect(serve.status, serve.out).toBe(1);
    expect(serve.out).toMatch(/cycle/);
    for (const r of [info, check, serve]) expect(r.ms).toBeLessThan(10_000);
  });

  it('a FIFO named as backing or image file is refused, never opened (no hang)', () => {
    const fifo = path.join(dir, 'pipe');
    execFileSync('mkfifo', [fifo]);
    writeCraftedAddCow(path.join(dir, 'fb.add-cow'), { imageName: 'a.img', backingName: 'pipe', virtualSize: MiB });
    writeCraftedAddCow(path.join(dir, 'fi.add-cow'), { imageName: 'pipe', virtualSize: MiB });
    for (const f of ['fb.add-cow', 'fi.add-cow']) {
      const serve = cownbd(['serve', path.join(dir, f), '-p', '0'], 10_000);
      expect(serve.status, serve.out).toBe(1);
      expect(serve.out).toMatch(/FIFO/);
      // info reports the chain without reading the FIFO: it must simply not hang.
      const info = cownbd(['info', '--backing-chain', path.join(dir, f)], 10_000);
      expect(info.status, info.out).not.toBeNull();
    }
  });

  it('check exits non-zero on add-cow images that cannot be opened; /proc files are refused', () => {
    const cases: Array<[string, Parameters<typeof writeCraftedAddCow>[1]]> = [
      ['qcow2 backing', { imageName: 'a.img', backingName: 'b.img', backingFormat: 'qcow2', virtualSize: MiB }],
      ['RAW backing', { imageName: 'a.img', backingName: 'b.img', backingFormat: 'RAW', virtualSize: MiB }],
      ['empty backing format', { imageName: 'a.img', backingName: 'b.img', backingFormat: '', virtualSize: MiB }],
      ['image name /', { imageName: '/', virtualSize: MiB }],
      ['backing /proc/self/fd/0', { imageName: 'a.img', backingName: '/proc/self/fd/0', virtualSize: MiB }],
      ['image /proc/self/mem', { imageName: '/proc/self/mem', virtualSize: MiB }],
    ];
    for (const [label, spec] of cases) {
      const f = path.join(dir, `${label.replace(/\W+/g, '-')}.add-cow`);
      writeCraftedAddCow(f, spec);
      const r = cownbd(['check', f]);
      expect(r.status, `${label}: ${r.out}`).not.toBe(0);
      expect(r.status, `${label}: ${r.out}`).not.toBeNull();
      const serve = cownbd(['serve', f, '-p', '0'], 10_000);
      expect(serve.status, `${label}: ${serve.out}`).toBe(1);
    }
  });
});

describe.runIf(hasNbd)('a crafted add-cow cannot write into another export\'s base (defect 13)', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('the golden base is never opened writable, whichever export opens first', async () => {
    const base = createPatternedImage(tmp.file('golden.img'), 4 * MiB, 5);
    const before = sha256File(base);
    // evil.add-cow's IMAGE file (the writable layer) is the golden base itself.
    const evil = tmp.file('evil.add-cow');
    writeCraftedAddCow(evil, { imageName: base, virtualSize: 4 * MiB });
    // --base is held read-only for the server's life: the evil export cannot open it writable.
    const r = cownbd(['serve', '--base', base, '--overlay-dir', tmp.file('ov'), '--create-dirs', '--export', `evil=${evil}`, '-p', '0']);
    expect(r.status, r.out).toBe(1);
    expect(r.out).toMatch(/never opened writable/);
    // Without --base: a read-only export of the golden image and the evil one.
    const r2 = cownbd(['serve', '--export', `good=${base},ro`, '--export', `evil=${evil}`, '-p', '0']);
    expect(r2.status, r2.out).toBe(1);
    expect(r2.out).toMatch(/never opened writable|cannot also be/);
    // And the overlays over the untouched base still work.
    const srv = await startServer(['--base', base, '--overlay-dir', tmp.file('ov2')]);
    try {
      const out = await nbdPython(PRELUDE + 'h = conn()\nh.pwrite(b"mine", 0)\nh.flush()\nprint(h.pread(4, 0))\n', { URI: srv.uri('vm1') });
      expect(out).toContain("b'mine'");
    } finally {
      await srv.stop();
    }
    expect(sha256File(base)).toBe(before);
  });

  it('--allow-path confines paths named in headers', async () => {
    const inside = tmp.file('allowed');
    mkdirSync(inside);
    const img = createPatternedImage(tmp.file('outside.img'), MiB, 1);
    const ac = path.join(inside, 'x.add-cow');
    writeCraftedAddCow(ac, { imageName: img, virtualSize: MiB });
    const serve = cownbd(['serve', ac, '-p', '0', '--allow-path', inside]);
    expect(serve.status, serve.out).toBe(1);
    expect(serve.out).toMatch(/outside the allowed directories/);
  });

  it('--allow-path resolves symlinks: a cow backing link.raw -> ../outside/secret.raw is refused, an inside link served (issue 26.8)', async () => {
    const allowed = tmp.file('allowed2');
    mkdirSync(allowed);
    const secret = createPatternedImage(tmp.file('secret.raw'), MiB, 7);
    const inside = createPatternedImage(path.join(allowed, 'inside.raw'), MiB, 8);
    symlinkSync('../secret.raw', path.join(allowed, 'link.raw'));
    symlinkSync('inside.raw', path.join(allowed, 'good.raw'));
    const cowOver = (name: string, target: string): string => {
      const file = path.join(allowed, name);
      writeCraftedCow(file, { layout: 'v3', backingPath: path.join(allowed, path.basename(target)), size: MiB, mtime: Math.floor(statSync(target).mtimeMs / 1000) });
      return file;
    };
    const evil = cowOver('evil.cow', path.join(allowed, 'link.raw'));
    const r = cownbd(['serve', evil, '-p', '0', '--allow-path', allowed]);
    expect(r.status, r.out).toBe(1);
    expect(r.out).toContain(`"${path.join(allowed, 'link.raw')}" (resolves to "${secret}")`);
    expect(r.out).toMatch(/outside the allowed directories/);
    // A link that stays inside the allowed directory is served.
    const good = cowOver('good.cow', path.join(allowed, 'good.raw'));
    const srv = await startServer([good, '--allow-path', allowed]);
    try {
      const out = await nbdPython(PRELUDE + 'h = conn()\nimport hashlib\nprint(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest())\n', { URI: srv.uri() });
      expect(out.trim()).toBe(sha256File(inside));
    } finally {
      await srv.stop();
    }
  });
});
