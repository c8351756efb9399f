/**
 * The real UML kernel (Debian user-mode-linux, linux.uml 6.1) against our cow driver,
 * in ONE boot (harness described in docs/cow-format.md#vectors):
 *   ubd1 = a COW made by createCow and written by OUR driver → the guest reads it with
 *          4 KiB O_DIRECT reads (sectr) and must see exactly the driver's view;
 *   ubd2 = a COW made by uml_mkcow and written by UML (sectw: sectors 0, 9-10, 100-163,
 *          300-364, 2047, BLKDISCARD 500-507, BLKZEROOUT 600-607) → our driver must read
 *          backing + those writes, and the bitmap must hold the bytes listed in
 *          docs/cow-format.md#vectors.
 * The guest's init prints COWTEST-BEGIN / COWTEST-END rc=N; the test requires both, so
 * it cannot pass without the guest having run. Harness: a busybox-static ext4 rootfs
 * (mkfs.ext4 -d), a hostfs-mounted script dir, and two static O_DIRECT helpers built
 * with gcc (`sectw DEV SECTOR COUNT FILL|discard|zeroout`, `sectr DEV OUT CHUNK`; CHUNK
 * 4096 avoids UML's multi-segment read bug, docs/cow-format.md#uml-io).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/formats/open-image.js';
import { createCow } from '../../src/formats/cow/index.js';
import { createPatternedImage, makeTempDir, sha256File, readImage } from '../helpers/images.js';
import { requireTool } from '../helpers/tools.js';

const haveTools = requireTool('linux.uml') && requireTool('uml_mkcow') && requireTool('gcc') && requireTool('mkfs.ext4') && requireTool('busybox');
const MiB = 1024 * 1024;


const SECTW = `#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
int main(int c, char **v){
  if (c < 5) return 2;
  long long sec = atoll(v[2]); long n = atol(v[3]);
  int fd = open(v[1], O_RDWR | O_DIRECT); if (fd < 0) { perror("open"); return 1; }
  if (!strcmp(v[4], "discard") || !strcmp(v[4], "zeroout")) {
    uint64_t r[2] = { sec * 512ULL, (uint64_t)n * 512ULL };
    if (ioctl(fd, !strcmp(v[4], "discard") ? BLKDISCARD : BLKZEROOUT, r)) { perror("ioctl"); return 1; }
    return 0; }
  void *b; if (posix_memalign(&b, 4096, n * 512)) return 1; memset(b, strtol(v[4], 0, 0), n * 512);
  if (pwrite(fd, b, n * 512, sec * 512) != n * 512) { perror("pwrite"); return 1; }
  fsync(fd); return 0; }
`;

const SECTR = `#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
int main(int c, char **v){
  if (c < 4) return 2;
  long chunk = atol(v[3]);
  int fd = open(v[1], O_RDONLY | O_DIRECT); if (fd < 0) { perror("open"); return 1; }
  int out = open(v[2], O_WRONLY | O_CREAT | O_TRUNC, 0644); if (out < 0) { perror("out"); return 1; }
  void *b; if (posix_memalign(&b, 4096, chunk)) return 1;
  long long off = 0;
  for (;;) { ssize_t n = pread(fd, b, chunk, off); if (n < 0) { perror("pread"); return 1; }
    if (n == 0) break; if (write(out, b, n) != n) { perror("write"); return 1; } off += n; }
  close(out); return 0; }
`;

interface UmlHarness {
  readonly dir: string;
  readonly rootfs: string;
  /** Host directory mounted at /host in the guest (test.sh and outputs live here). */
  readonly hostDir: string;
}

function buildUmlHarness(dir: string): UmlHarness {
  const root = path.join(dir, 'rootdir');
  const hostDir = path.join(dir, 'host');
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'host', 'tmp']) mkdirSync(path.join(root, d), { recursive: true });
  mkdirSync(hostDir, { recursive: true });
  execFileSync('cp', ['/bin/busybox', path.join(root, 'bin', 'busybox')]);
  for (const applet of ['sh', 'mount', 'sync', 'poweroff', 'echo', 'cat', 'ls', 'blockdev', 'sleep', 'od', 'head']) {
    symlinkSync('busybox', path.join(root, 'bin', applet));
  }
  for (const [name, src] of [
    ['sectw', SECTW],
    ['sectr', SECTR],
  ] as const) {
    const c = path.join(dir, `${name}.c`);
    writeFileSync(c, src);
    execFileSync('gcc', ['-O2', '-static', '-o', path.join(root, 'bin', name), c], { stdio: 'pipe' });
  }
  const init = path.join(root, 'sbin', 'init');
  writeFileSync(
    init,
    [
      '#!/bin/sh',
      'export PATH=/bin',
      'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null',
      `mount -t hostfs none /host -o ${hostDir}`,
      'echo COWTEST-BEGIN',
      '[ -f /host/test.sh ] && /bin/sh /host/test.sh; echo "COWTEST-END rc=$?"',
      'sync; poweroff -f',
      '',
    ].join('\n'),
  );
  chmodSync(init, 0o755);
  const rootfs = path.join(dir, 'rootfs.img');
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', root, rootfs, '16M'], { stdio: 'pipe' });
  return { dir, rootfs, hostDir };
}

interface UmlRun {
  readonly stdout: string;
  readonly status: number | null;
  /** The guest script's exit status, parsed from the COWTEST-END marker (undefined: it never ran). */
  readonly scriptRc: number | undefined;
}

/** Boot UML once with `script` as /host/test.sh and extra ubd arguments. */
function runUml(h: UmlHarness, script: string, ubdArgs: string[], timeoutSec = 120): UmlRun {
  writeFileSync(path.join(h.hostDir, 'test.sh'), `set -e\n${script}\n`);
  const r = spawnSync(
    'timeout',
    [
      String(timeoutSec),
      'linux.uml',
      'mem=64M',
      `ubd0=${h.rootfs}`,
      'root=/dev/ubda',
      'rw',
      'init=/sbin/init',
      'con=null',
      'con0=fd:0,fd:1',
      ...ubdArgs,
    ],
    { cwd: h.dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: h.dir }, maxBuffer: 64 * 1024 * 1024 },
  );
  const stdout = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const m = /COWTEST-END rc=(\d+)/.exec(stdout);
  return { stdout, status: r.status, scriptRc: m ? Number(m[1]) : undefined };
}

const tmp = makeTempDir('uml-kernel-');
afterAll(() => tmp.cleanup());


describe.runIf(haveTools)('UML kernel interop', () => {
  it('UML reads what the driver wrote, and the driver reads what UML wrote', async () => {
    const h = buildUmlHarness(tmp.path);
    const base1 = createPatternedImage(tmp.file('base1.img'), MiB, 21);
    const base2 = createPatternedImage(tmp.file('base2.img'), MiB, 22);
    utimesSync(base1, 1_643_767_322, 1_643_767_322);
    utimesSync(base2, 1_643_767_322, 1_643_767_322);
    const sums = [sha256File(base1), sha256File(base2)];

    // ubd1: written by our driver.
    const ov1 = tmp.file('ov1.cow');
    await createCow(ov1, { backingFile: base1 });
    const dev = await openImage(ov1);
    await dev.write(0, Buffer.alloc(512, 0xe1));
    await dev.write(9 * 512 + 100, Buffer.alloc(1500, 0xe2)); // partial sectors 9 and 12
    await dev.write(64 * 1024, Buffer.alloc(64 * 1024, 0xe3));
    await dev.writeZeroes(700 * 512 + 7, 5000);
    await dev.trim(800 * 512, 4096);
    await dev.write(MiB - 512, Buffer.alloc(512, 0xe4));
    await dev.flush();
    await dev.close();
    const ourView = await readImage(ov1);

    // ubd2: made by uml_mkcow, written by UML.
    const ov2 = tmp.file('ov2.cow');
    execFileSync('uml_mkcow', [ov2, base2]);

    const script = [
      'blockdev --getsize64 /dev/ubdb > /host/size1.txt',
      'sectr /dev/ubdb /host/view1.bin 4096',
      'sectw /dev/ubdc 0 1 0xee',
      'sectw /dev/ubdc 9 2 0xee',
      'sectw /dev/ubdc 100 64 0xee',
      'sectw /dev/ubdc 300 64 0xdd',
      'sectw /dev/ubdc 364 1 0xdd',
      'sectw /dev/ubdc 2047 1 0xee',
      'sectw /dev/ubdc 500 8 discard',
      'sectw /dev/ubdc 600 8 zeroout',
      'sync',
    ].join('\n');
    const run = runUml(h, script, [`ubd1=${ov1},${base1}`, `ubd2=${ov2},${base2}`]);
    expect(run.stdout, run.stdout.slice(-3000)).toContain('COWTEST-BEGIN');
    expect(run.scriptRc, run.stdout.slice(-3000)).toBe(0);

    // UML's view of our writes.
    expect(readFileSync(path.join(h.hostDir, 'size1.txt'), 'utf8').trim()).toBe(String(MiB));
    const umlView = readFileSync(path.join(h.hostDir, 'view1.bin'));
    expect(umlView.length).toBe(MiB);
    expect(umlView.equals(ourView)).toBe(true);
    expect(umlView[9 * 512 + 100]).toBe(0xe2);

    // Our view of UML's writes.
    const expected = readFileSync(base2);
    const put = (s: number, n: number, v: number) => expected.fill(v, s * 512, (s + n) * 512);
    put(0, 1, 0xee);
    put(9, 2, 0xee);
    put(100, 64, 0xee);
    put(300, 65, 0xdd);
    put(2047, 1, 0xee);
    put(500, 8, 0);
    put(600, 8, 0);
    const view2 = await readImage(ov2);
    expect(view2.equals(expected)).toBe(true);
    const bm = readFileSync(ov2).subarray(8192, 8192 + 256);
    expect(bm[0]).toBe(0x01);
    expect(bm[1]).toBe(0x06);
    expect(bm[12]).toBe(0xf0);
    expect(bm[45]).toBe(0x1f);
    expect(bm[62]).toBe(0xf0); // discard 500-507 sets bits: byte 62 bits 4-7, byte 63 bits 0-3
    expect(bm[63]).toBe(0x0f);
    expect(bm[75]).toBe(0xff); // zeroout 600-607
    expect(bm[255]).toBe(0x80);

    // Neither side touched a backing file.
    expect([sha256File(base1), sha256File(base2)]).toEqual(sums);
  }, 150_000);
});
