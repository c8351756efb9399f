/**
 * `serve --base B --overlay-dir DIR` and `serve --ephemeral B`, black-box over real
 * sockets with python3-libnbd: overlays are created on first GO and reused, machines are
 * isolated, names are sanitised, INFO/LIST create nothing, ephemeral overlays vanish with
 * their connection, left-overs of a killed server are cleaned at the next start, and the
 * base image never changes.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir, sha256File } from '../helpers/images.js';
import { nbdPython, requireNbdPython, runNbdPython, startServer } from '../helpers/server.js';

const usable = requireNbdPython();

describe.runIf(usable)('serve --base --overlay-dir', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const base = createPatternedImage(tmp.file('golden.img'), 4 << 20, 7);
  const baseSum = sha256File(base);
  const dir = tmp.file('overlays');

  it('creates NAME.cow on first connect, reuses it after, isolates machines, never touches the base', async () => {
    const srv = await startServer(['--base', base, '--overlay-dir', dir]);
    try {
      // INFO alone (what nbdinfo/--list do) must not create an overlay.
      await nbdPython(`
import nbd
h = nbd.NBD(); h.set_opt_mode(True); h.connect_uri(URI)
h.opt_info(); print(h.get_size()); h.opt_abort()
`, { URI: srv.uri('vm1') });
      expect(existsSync(path.join(dir, 'vm1.cow'))).toBe(false);

      const out = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
assert h.can_multi_conn()
h.pwrite(b"vm1 was here", 4096)
h.flush()
print(h.get_size())
`, { URI: srv.uri('vm1') });
      expect(Number(out.trim())).toBe(4 << 20);
      expect(existsSync(path.join(dir, 'vm1.cow'))).toBe(true);

      const vm2 = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.pread(12, 4096).hex())
`, { URI: srv.uri('vm2') });
      // vm2 sees the base, not vm1's write.
      const baseBytes = (await import('node:fs')).readFileSync(base).subarray(4096, 4108).toString('hex');
      expect(vm2.trim()).toBe(baseBytes);

      const listed = await nbdPython(`
import nbd
h = nbd.NBD(); h.set_opt_mode(True); h.connect_uri(URI)
names = []
h.opt_list(lambda name, desc: names.append(name))
print(",".join(sorted(names)))
h.opt_abort()
`, { URI: srv.uri('') });
      expect(listed.trim()).toBe('vm1,vm2');
    } finally {
      await srv.stop();
    }

    // A new server process reuses the existing overlay.
    const again = await startServer(['--base', base, '--overlay-dir', dir]);
    try {
      const out = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.pread(12, 4096))
`, { URI: again.uri('vm1') });
      expect(out).toContain('vm1 was here');
    } finally {
      await again.stop();
    }
    expect(sha256File(base)).toBe(baseSum);
  });

  it('an overlay whose base was touched is refused, and served again with --ignore-mtime', async () => {
    const { utimesSync } = await import('node:fs');
    const touchDir = tmp.file('touched');
    const srv = await startServer(['--base', base, '--overlay-dir', touchDir]);
    try {
      await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI); h.pwrite(b"before touch", 0); h.flush()
`, { URI: srv.uri('vmt') });
    } finally {
      await srv.stop();
    }
    const later = Date.now() / 1000 + 3600;
    utimesSync(base, later, later);
    const read = `
import nbd
h = nbd.NBD()
try:
    h.connect_uri(URI); print(h.pread(12, 0))
except nbd.Error as e:
    print("REFUSED", e)
`;
    const strict = await startServer(['--base', base, '--overlay-dir', touchDir]);
    try {
      expect(await nbdPython(read, { URI: strict.uri('vmt') })).toMatch(/REFUSED/);
      expect(strict.stderr()).toMatch(/mtime mismatch/);
    } finally {
      await strict.stop();
    }
    const lenient = await startServer(['--base', base, '--overlay-dir', touchDir, '--ignore-mtime']);
    try {
      expect(await nbdPython(read, { URI: lenient.uri('vmt') })).toContain('before touch');
    } finally {
      await lenient.stop();
    }
    expect(sha256File(base)).toBe(baseSum);
  });

  it.each([
    ['../escape', 'path separator and ..'],
    ['.hidden', 'leading dot'],
    ['a'.repeat(129), 'too long'],
    ['', 'empty name'],
  ])('refuses export name %j (%s) with ERR_UNKNOWN and a log line', async (name) => {
    const srv = await startServer(['--base', base, '--overlay-dir', dir]);
    try {
      const r = await runNbdPython(`
import nbd
h = nbd.NBD(); h.set_export_name(NAME)
try:
    h.connect_tcp("127.0.0.1", str(PORT))
    print("CONNECTED")
except nbd.Error as e:
    print("REFUSED", e)
`, { NAME: name, PORT: srv.port });
      expect(r.stdout).toMatch(/REFUSED/);
      expect(srv.stderr()).toMatch(/refused export name/);
      expect(readdirSync(dir).filter((f) => !/^vm[12]\.cow$/.test(f))).toEqual([]);
    } finally {
      await srv.stop();
    }
  });
});

describe.runIf(usable)('serve --ephemeral', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const base = createPatternedImage(tmp.file('golden.img'), 2 << 20, 3);
  const baseSum = sha256File(base);
  const ephDir = tmp.file('eph');

  it('gives every connection its own overlay, deleted when the connection closes, without CAN_MULTI_CONN', async () => {
    const srv = await startServer(['--ephemeral', base, '--ephemeral-dir', ephDir]);
    try {
      const out = await nbdPython(`
import nbd, os
a = nbd.NBD(); a.connect_uri(URI)
b = nbd.NBD(); b.connect_uri(URI)
assert not a.can_multi_conn()
a.pwrite(b"A" * 512, 0); a.flush()
print(len([f for f in os.listdir(DIR) if f.endswith(".cow")]))
print(b.pread(1, 0) == b"A")
a.shutdown(); b.shutdown()
`, { URI: srv.uri(''), DIR: ephDir });
      const [count, bSeesA] = out.trim().split('\n');
      expect(Number(count)).toBe(2);
      expect(bSeesA).toBe('False');
      // Both overlays are removed once their connections are gone.
      for (let i = 0; i < 50 && readdirSync(ephDir).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect(readdirSync(ephDir)).toEqual([]);

      const fresh = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI)
print(h.pread(1, 0) == b"A")
`, { URI: srv.uri('') });
      expect(fresh.trim()).toBe('False');
    } finally {
      await srv.stop();
    }
    expect(sha256File(base)).toBe(baseSum);
  });

  it('removes left-overs of a killed server at the next start', async () => {
    // An overlay left by a dead pid (pid 2^22+1 cannot exist on Linux by default).
    const stale = path.join(ephDir, 'cownbd-ephemeral-4194305-1-deadbeef.cow');
    writeFileSync(stale, 'left over');
    const srv = await startServer(['--ephemeral', base, '--ephemeral-dir', ephDir]);
    try {
      expect(existsSync(stale)).toBe(false);
      expect(srv.stderr()).toMatch(/removed left-over ephemeral overlays/);
    } finally {
      await srv.stop();
    }
  });
});
