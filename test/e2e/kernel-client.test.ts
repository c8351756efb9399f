/**
 * Journey 3 with the real Linux kernel client: Debian's cloud kernel under QEMU/TCG runs
 * Debian's nbd-client 3.24 and attaches cownbd's exports as /dev/nbdX, through
 * virtio-serial ports (no IP networking; see test/e2e/support/kernel-guest.ts and
 * docs/kernel-client.md). Guests are slow under TCG, so several cases share one guest run:
 *
 *   guest 1  /dev/nbd0 (-b 4096) raw writes (O_DIRECT and buffered+fsync) read back, DISC
 *            on -d; /dev/nbd1 (a second per-machine export, attached at the same time) gets
 *            mkfs.ext4 + mount + fstrim; /dev/nbd2 attaches with -C 4 (four connections);
 *            -C 2 against `--ephemeral` is refused by the kernel (no CAN_MULTI_CONN); over
 *            TLS with vm1's client certificate (`--overlay-dir-match-identity`) export vm2
 *            is refused and vm1 works; a partition table inside an export (max_part=8),
 *            ext4 on /dev/nbd3p1.
 *   guest 2  root on NBD: the initramfs attaches export vm1 and switch_roots into it, the
 *            golden image's init writes a token;
 *   guest 3  the same machine boots again and reads the token back.
 *   guest 4  -t 5 with the server paused (the read fails after ~5 s), then kill -9 and a new
 *            server under an attached `-p` device (I/O does not resume with Debian 12's
 *            nbd-client); after re-attaching, every fsynced write is there; a 16 GiB export
 *            (sparse base) gets blkdiscard + mkfs.ext4 (TRIMs of GiBs), the base untouched.
 *
 * After each guest, on the host: the served view equals base + the guest's writes (read
 * back through the server with nbdcopy), `cownbd check` is clean on every overlay, the
 * base's hash is unchanged and the server logged no warning or error. The relay's wire tap
 * shows what the kernel sent (FLUSH, TRIM, DISC per connection).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_PATH, startServer, type RunningServer } from '../helpers/server.js';
import { makeTlsFixture, requireTlsTools, type TlsFixture } from '../helpers/tls-creds.js';
import { requireTool } from '../helpers/tools.js';
import { S3_ENV, startS3Server } from '../helpers/s3-server.js';
import { copyGolden, E2E_SCRIPTS, makeWorkDir, prepareAssets, removeDir, run, sha256File, Timings } from './support/harness.js';
import { bootKitGuest, dumpExport, prepareKit, type ConnectionRecord, type GuestResult, type KitAssets } from './support/kernel-guest.js';

const canRun =
  requireTool('qemu-system-x86_64') &&
  requireTool('nbd-client') &&
  requireTool('mke2fs') &&
  requireTool('e2fsck') &&
  requireTool('debugfs') &&
  requireTool('busybox') &&
  requireTool('cc') &&
  requireTool('nbdcopy') &&
  requireTlsTools();

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

function expectGuestOk(r: GuestResult, what: string, serverLog: string): void {
  if (r.code !== 0) throw new Error(`${what}: guest exit ${r.code} after ${r.ms} ms\n${r.console}\n--- server log ---\n${serverLog.slice(-6000)}`);
}

/** The value printed after `KEY ` by the guest (first match). */
function guestValue(r: GuestResult, key: string): string {
  const line = r.output.find((l) => l.startsWith(`${key} `));
  if (line === undefined) throw new Error(`guest printed no ${key} line\n${r.console}`);
  return line.slice(key.length + 1).trim();
}

/** path:sha256 of every file under `dir` (what the S3 test server stores), sorted. */
async function storedFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    out.push(`${path.relative(dir, p)}:${await sha256(await readFile(p))}`);
  }
  return out.sort();
}

function sha256(buf: Buffer): Promise<string> {
  return import('node:crypto').then((c) => c.createHash('sha256').update(buf).digest('hex'));
}

describe.runIf(canRun)('journey 3: the Linux kernel NBD client (/dev/nbdX in a QEMU guest)', () => {
  const timings = new Timings();
  let kit: KitAssets;
  let dir: string;
  let golden: string;
  let goldenSha: string;
  let goldenBytes: Buffer;
  let srv: RunningServer | undefined;
  /** `--ephemeral`: one throwaway overlay per connection, so no CAN_MULTI_CONN. */
  let eph: RunningServer | undefined;
  /** `--tls require` with client certificates, each machine limited to its own overlay. */
  let tls: RunningServer | undefined;
  let tlsFixture: TlsFixture;
  const tlsOverlayDir = (): string => path.join(dir, 'tls-overlays');
  const overlayDir = (): string => path.join(dir, 'overlays');

  beforeAll(async () => {
    const t0 = Date.now();
    const assets = await prepareAssets({ qemu: false });
    kit = await prepareKit(E2E_SCRIPTS);
    timings.add('prepare kit (cached after 1st run)', Date.now() - t0);
    dir = await makeWorkDir('kernel');
    golden = await copyGolden(assets, dir);
    goldenBytes = await readFile(golden);
    goldenSha = await sha256File(golden);
    srv = await startServer(['--base', golden, '--overlay-dir', overlayDir()], { unix: true });
    eph = await startServer(['--ephemeral', golden, '--ephemeral-dir', path.join(dir, 'ephemeral')], { unix: true });
    tlsFixture = makeTlsFixture(path.join(dir, 'pki'), ['vm1']);
    tls = await startServer(
      ['--base', golden, '--overlay-dir', tlsOverlayDir(), '--tls', 'require', '--tls-certificates', tlsFixture.serverDir,
        '--tls-verify-peer', '--overlay-dir-match-identity'],
      { unix: true },
    );
  }, 600_000);

  afterAll(async () => {
    await srv?.stop().catch(() => {});
    await eph?.stop().catch(() => {});
    await tls?.stop().catch(() => {});
    timings.print('journey 3 (kernel client)');
    await removeDir(dir);
  });

  /** Host-side invariants after every guest: base untouched, overlays clean, quiet log. */
  async function expectHostInvariants(exports: string[]): Promise<void> {
    expect(await sha256File(golden)).toBe(goldenSha);
    for (const name of exports) {
      const check = await run(process.execPath, [CLI_PATH, 'check', path.join(overlayDir(), `${name}.cow`)], { timeoutMs: 60_000 });
      expect(check.code, `cownbd check ${name}.cow\n${check.stdout}${check.stderr}`).toBe(0);
    }
    const bad = srv!
      .stderr()
      .split('\n')
      .filter((l) => /"level":(40|50|60)\b/.test(l));
    expect(bad, 'server warnings/errors').toEqual([]);
  }

  const target = (port: string) => ({ path: ({ e: eph, t: tls }[port[0]!] ?? srv)!.socketPath! });
  const byPort = (conns: ConnectionRecord[], prefix: string): ConnectionRecord[] => conns.filter((c) => c.port.startsWith(prefix));

  it('attach, O_DIRECT and buffered writes, ext4 + fstrim, two devices at once, -C 4, -b 4096, --ephemeral refusing -C 2, TLS identities, a partition; DISC on every -d', async () => {
    const r = await bootKitGuest({
      assets: kit,
      dir,
      ports: ['p0', 'p1', 'm0', 'm1', 'm2', 'm3', 'e0', 'e1', 't0', 't1'],
      files: Object.fromEntries(
        ['client-cert.pem', 'client-key.pem', 'ca-cert.pem'].map((f) => [f, readFileSync(path.join(tlsFixture.clientDir('vm1'), f))]),
      ),
      target,
      smp: 2,
      nbdParams: 'nbds_max=4,max_part=8',
      steps: `
bridge /run/p0.sock p0
bridge /run/p1.sock p1
bridge /run/m.sock m0 m1 m2 m3
bridge /run/e.sock e0 e1
bridge /run/t.sock t0 t1
# Two per-machine exports attached at the same time; nbd0 with 4 KiB logical blocks.
nbd-client -u /run/p0.sock /dev/nbd0 -N raw1 -t 60 -b 4096
echo "SECTOR0 $(blockdev --getss /dev/nbd0)"
nbd-client -u /run/p1.sock /dev/nbd1 -N fs1 -t 60
echo "SIZE0 $(blockdev --getsize64 /dev/nbd0)"
dd if=/dev/urandom of=/tmp/pat bs=64k count=16 2>/dev/null
echo "PAT $(sha256sum </tmp/pat | cut -d' ' -f1)"
# 1 MiB with O_DIRECT at 5 MiB, the same buffered (page cache, then fsync) at 12.5 MiB.
dd if=/tmp/pat of=/dev/nbd0 bs=64k seek=80 oflag=direct 2>/dev/null
dd if=/tmp/pat of=/dev/nbd0 bs=64k seek=200 conv=fsync 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches
echo "RD1 $(dd if=/dev/nbd0 bs=64k skip=80 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "RD2 $(dd if=/dev/nbd0 bs=64k skip=200 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)"
nbd-client -d /dev/nbd0
# A filesystem: mkfs (discards the device), files, fstrim after a delete.
mkfs.ext4 -q -F -L kclient /dev/nbd1
mount -t ext4 /dev/nbd1 /mnt
echo kernel-token >/mnt/token.txt
dd if=/dev/urandom of=/mnt/big bs=64k count=64 2>/dev/null
sync
rm /mnt/big
sync
echo "TRIM $(fstrim -v /mnt)"
umount /mnt
nbd-client -d /dev/nbd1
# Four connections to one export (cownbd --overlay-dir advertises CAN_MULTI_CONN).
nbd-client -u /run/m.sock /dev/nbd2 -N mc1 -C 4 -t 60
echo "QUEUES $(ls /sys/block/nbd2/mq | wc -l)"
# One writer per CPU: blk-mq maps each CPU's queue to its own connection.
taskset 1 dd if=/tmp/pat of=/dev/nbd2 bs=64k seek=16 oflag=direct 2>/dev/null &
w1=$!
taskset 2 dd if=/tmp/pat of=/dev/nbd2 bs=64k seek=48 oflag=direct 2>/dev/null &
w2=$!
wait $w1 $w2 # not a bare wait: the bridges run in the background too
dd if=/dev/zero of=/dev/nbd2 bs=4k count=1 conv=fsync 2>/dev/null
echo "MC1 $(dd if=/dev/nbd2 bs=64k skip=16 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "MC2 $(dd if=/dev/nbd2 bs=64k skip=48 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
nbd-client -d /dev/nbd2
# --ephemeral gives every connection its own overlay and does not advertise CAN_MULTI_CONN:
# a -C 2 attach must be refused, not made into a device whose halves disagree.
if nbd-client -u /run/e.sock /dev/nbd3 -C 2 -t 60; then echo "EPH attached"; nbd-client -d /dev/nbd3; else echo "EPH refused rc=$?"; fi
echo "EPHMSG $(dmesg | grep -c 'does not support multiple connections')"
# A partition table inside an export (max_part=8): /dev/nbd3p1 gets a filesystem.
nbd-client -u /run/p0.sock /dev/nbd3 -N part1 -t 60
printf 'o\nn\np\n1\n2048\n\nw\n' | fdisk /dev/nbd3 >/dev/null 2>&1 || true
i=0; while [ ! -b /dev/nbd3p1 ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
mkfs.ext4 -q -F /dev/nbd3p1
mount -t ext4 /dev/nbd3p1 /mnt
echo part-token >/mnt/part.txt
umount /mnt
nbd-client -d /dev/nbd3
# TLS with vm1's client certificate: its own export attaches, another machine's does not.
tlsopts="-certfile /e2e/client-cert.pem -keyfile /e2e/client-key.pem -cacertfile /e2e/ca-cert.pem -tlshostname localhost"
if nbd-client $tlsopts -u /run/t.sock /dev/nbd3 -N vm2 -t 60; then echo "TLSVM2 attached"; nbd-client -d /dev/nbd3; else echo "TLSVM2 refused"; fi
nbd-client $tlsopts -u /run/t.sock /dev/nbd3 -N vm1 -t 60
dd if=/tmp/pat of=/dev/nbd3 bs=64k seek=32 oflag=direct conv=fsync 2>/dev/null
echo "TLSRD $(dd if=/dev/nbd3 bs=64k skip=32 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
nbd-client -d /dev/nbd3
echo DONE
`,
    });
    timings.add('guest 1 (raw, ext4+fstrim, -C 4)', r.ms);
    expectGuestOk(r, "kernel client guest", `${srv!.stderr()}\n--- tls server ---\n${tls!.stderr()}`);
    expect(r.output).toContain('DONE');
    const pat = guestValue(r, 'PAT');
    expect(guestValue(r, 'SIZE0')).toBe(String(goldenBytes.length));
    expect(guestValue(r, 'SECTOR0'), 'nbd-client -b 4096').toBe('4096');
    expect(r.output.join('\n')).toMatch(/EPH refused rc=\d+/);
    expect(guestValue(r, 'RD1')).toBe(pat);
    expect(guestValue(r, 'RD2')).toBe(pat);
    expect(guestValue(r, 'MC1')).toBe(pat);
    expect(guestValue(r, 'MC2')).toBe(pat);

    // What the kernel sent: one GO per connection, flags 3, no structured-reply dialect.
    const raw = byPort(r.connections, 'p0').slice(0, 1);
    const fs = byPort(r.connections, 'p1');
    const part = byPort(r.connections, 'p0').slice(1);
    expect(part).toHaveLength(1);
    const mc = byPort(r.connections, 'm');
    expect(raw).toHaveLength(1);
    expect(fs).toHaveLength(1);
    expect(mc).toHaveLength(4);
    const ephConns = byPort(r.connections, 'e');
    // The kernel itself refuses -C 2 without CAN_MULTI_CONN, after both handshakes: no
    // request reaches the ephemeral server, and its per-connection overlays are gone.
    expect(ephConns).toHaveLength(2);
    for (const c of ephConns) expect(c.wire.counts, c.port).toEqual({});
    expect(guestValue(r, 'EPHMSG'), 'kernel: "server does not support multiple connections per device"').not.toBe('0');
    for (const c of [...raw, ...fs, ...mc, ...part]) {
      expect(c.wire.error, c.port).toBeUndefined();
      expect(c.wire.clientFlags, c.port).toBe(3);
      expect(c.wire.options, c.port).toEqual([7]);
      expect(c.wire.counts.DISC, `${c.port}: one NBD_CMD_DISC at nbd-client -d`).toBe(1);
      for (const never of ['CACHE', 'WRITE_ZEROES', 'BLOCK_STATUS']) expect(c.wire.counts[never], `${c.port} ${never}`).toBeUndefined();
      expect(c.wire.maxIoLength).toBeLessThanOrEqual(128 * 1024);
    }
    expect(raw[0]!.wire.counts.FLUSH, 'fsync reaches the server as FLUSH').toBeGreaterThan(0);
    // FUA comes from ext4 journal commits only, not from O_DIRECT or fsync on a raw device.
    expect(raw[0]!.wire.fua).toBe(0);
    expect(fs[0]!.wire.fua).toBeGreaterThan(0);
    expect(fs[0]!.wire.counts.TRIM, 'mkfs and fstrim reach the server as TRIM').toBeGreaterThan(0);
    expect(fs[0]!.wire.counts.FLUSH).toBeGreaterThan(0);
    // Two CPUs, two hardware queues: the two pinned writers use two connections.
    expect(guestValue(r, 'QUEUES')).toBe('2');
    expect(mc.filter((c) => (c.wire.counts.WRITE ?? 0) > 0).length, 'connections that carried writes').toBeGreaterThanOrEqual(2);
    // One fsync on the -C 4 device is ONE FLUSH on ONE connection (not one per connection),
    // so the server's multi-conn flush must cover every connection's writes.
    expect(mc.reduce((n, c) => n + (c.wire.counts.FLUSH ?? 0), 0), 'FLUSHes for the one fsync on the -C 4 device').toBe(1);
    const trimLine = guestValue(r, 'TRIM');
    expect(trimLine).toMatch(/\/mnt: \d+ bytes trimmed/);

    // The served view is base + exactly the guest's writes.
    const rawView = path.join(dir, 'raw1.img');
    await dumpExport(srv!.uri('raw1'), rawView);
    const view = await readFile(rawView);
    const expected = Buffer.from(goldenBytes);
    view.copy(expected, 5 * MiB, 5 * MiB, 6 * MiB);
    view.copy(expected, 12.5 * MiB, 12.5 * MiB, 13.5 * MiB);
    expect(await sha256(view.subarray(5 * MiB, 6 * MiB))).toBe(pat);
    expect(await sha256(view.subarray(12.5 * MiB, 13.5 * MiB))).toBe(pat);
    expect(view.equals(expected), 'raw1 outside the two written MiB equals the base').toBe(true);

    const mcView = await (async () => {
      const f = path.join(dir, 'mc1.img');
      await dumpExport(srv!.uri('mc1'), f);
      return readFile(f);
    })();
    expect(await sha256(mcView.subarray(1 * MiB, 2 * MiB))).toBe(pat);
    expect(await sha256(mcView.subarray(3 * MiB, 4 * MiB))).toBe(pat);
    expect(mcView.subarray(0, 4096).equals(Buffer.alloc(4096))).toBe(true);

    // The filesystem the guest made is clean by the host's e2fsck and holds its file.
    const fsView = path.join(dir, 'fs1.img');
    await dumpExport(srv!.uri('fs1'), fsView);
    const fsck = await run('e2fsck', ['-fn', fsView], { timeoutMs: 60_000 });
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    const cat = await run('debugfs', ['-R', 'cat /token.txt', fsView], { timeoutMs: 30_000 });
    expect(cat.stdout.trim()).toBe('kernel-token');

    await expectHostInvariants(['raw1', 'fs1', 'mc1']);

    // The partition the guest made: MBR entry 1 at sector 2048, a clean ext4 holding its file.
    const partView = await (async () => {
      const f = path.join(dir, 'part1.img');
      await dumpExport(srv!.uri('part1'), f);
      return readFile(f);
    })();
    expect(partView.readUInt16LE(510), 'MBR signature').toBe(0xaa55);
    const start = partView.readUInt32LE(446 + 8) * 512;
    const sectors = partView.readUInt32LE(446 + 12);
    expect(start).toBe(2048 * 512);
    const partFile = path.join(dir, 'part1p1.img');
    await writeFile(partFile, partView.subarray(start, start + sectors * 512));
    const partFsck = await run('e2fsck', ['-fn', partFile], { timeoutMs: 60_000 });
    expect(partFsck.code, partFsck.stdout + partFsck.stderr).toBe(0);
    expect((await run('debugfs', ['-R', 'cat /part.txt', partFile], { timeoutMs: 30_000 })).stdout.trim()).toBe('part-token');
    await expectHostInvariants(['part1']);

    // TLS: vm1's certificate opened vm1 only; its write is in tls-overlays/vm1.cow.
    expect(r.output).toContain('TLSVM2 refused');
    expect(tls!.stderr()).toContain('identity \\"vm1\\" not allowed');
    expect(guestValue(r, 'TLSRD')).toBe(pat);
    const tlsConns = byPort(r.connections, 't');
    expect(tlsConns.length).toBe(2);
    for (const c of tlsConns) expect(c.wire.tls, 'STARTTLS before anything else').toBe(true);
    expect(await readdir(tlsOverlayDir())).toEqual(['vm1.cow']);
    const tlsCheck = await run(process.execPath, [CLI_PATH, 'check', path.join(tlsOverlayDir(), 'vm1.cow')], { timeoutMs: 60_000 });
    expect(tlsCheck.code, tlsCheck.stdout + tlsCheck.stderr).toBe(0);
    expect(await readdir(path.join(dir, 'ephemeral')).catch(() => []), 'ephemeral overlays deleted').toEqual([]);
    expect(eph!.stderr().split('\n').filter((l) => /"level":(40|50|60)\b/.test(l)), 'ephemeral server warnings/errors').toEqual([]);
  }, 600_000);

  it('root on NBD with a per-machine overlay: the second boot sees the first boot\'s writes', async () => {
    const token = randomBytes(8).toString('hex');
    // PID 1 of the kit attaches /dev/nbd0 and switch_roots into the golden image, whose
    // init runs e2e_script (scripts/e2e/golden-image.sh) between the E2E markers.
    const bootScript = `
bridge /run/p0.sock p0
nbd-client -u /run/p0.sock /dev/nbd0 -N vm1 -t 60 || fail "nbd-client"
mount -t ext4 -o rw /dev/nbd0 /newroot || fail "mount /dev/nbd0"
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
`;
    const boot = (script: string): Promise<GuestResult> =>
      bootKitGuest({
        assets: kit,
        dir,
        ports: ['p0'],
        target,
        bootScript,
        append: [`e2e_script=${Buffer.from(script).toString('base64')}`],
      });
    const first = await boot(`echo "${token}" >/root/kernel-root.txt\nsync\necho "RELEASE $(cat /etc/golden-release)"\n`);
    timings.add('guest 2 (root on /dev/nbd0, write)', first.ms);
    expectGuestOk(first, 'first root-on-NBD boot', srv!.stderr());
    expect(first.output).toContain('RELEASE cownbd-e2e golden v1');
    expect(first.connections).toHaveLength(1);
    expect(first.connections[0]!.wire.counts.WRITE).toBeGreaterThan(0);
    await expectHostInvariants(['vm1']);

    const second = await boot('echo "TOKEN $(cat /root/kernel-root.txt)"\n');
    timings.add('guest 3 (root on /dev/nbd0, read back)', second.ms);
    expectGuestOk(second, 'second root-on-NBD boot', srv!.stderr());
    expect(second.output).toContain(`TOKEN ${token}`);

    // The machine's overlay holds the token; the host's e2fsck finds the fs clean.
    const view = path.join(dir, 'vm1.img');
    await dumpExport(srv!.uri('vm1'), view);
    const fsck = await run('e2fsck', ['-fn', view], { timeoutMs: 60_000 });
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    const cat = await run('debugfs', ['-R', 'cat /root/kernel-root.txt', view], { timeoutMs: 30_000 });
    expect(cat.stdout.trim()).toBe(token);
    await expectHostInvariants(['vm1']);
  }, 600_000);
  /**
   * One root-on-NBD boot of machine vm1 against a server started with `args`: the guest
   * writes a token into its root filesystem; on the host the token is in vm1's overlay
   * (read through the server), e2fsck is clean and `cownbd check` too.
   */
  async function rootBootOver(label: string, args: string[], checkArgs: string[], env?: NodeJS.ProcessEnv): Promise<void> {
    const overlays = path.join(dir, `${label}-overlays`);
    const server = await startServer([...args, '--overlay-dir', overlays], { unix: true, env: env as Record<string, string> | undefined });
    try {
      const token = randomBytes(8).toString('hex');
      const result = await bootKitGuest({
        assets: kit,
        dir,
        ports: ['q0'],
        target: () => ({ path: server.socketPath! }),
        bootScript: `
bridge /run/q0.sock q0
nbd-client -u /run/q0.sock /dev/nbd0 -N vm1 -t 60 || fail "nbd-client"
mount -t ext4 -o rw /dev/nbd0 /newroot || fail "mount /dev/nbd0"
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
`,
        append: [`e2e_script=${Buffer.from(`echo "${token}" >/root/${label}-root.txt\nsync\necho "RELEASE $(cat /etc/golden-release)"\n`).toString('base64')}`],
      });
      timings.add(`guest (root on /dev/nbd0 over a ${label} base)`, result.ms);
      expectGuestOk(result, `root-on-NBD boot over ${label}`, server.stderr());
      expect(result.output).toContain('RELEASE cownbd-e2e golden v1');
      const view = path.join(dir, `vm1-${label}.img`);
      await dumpExport(server.uri('vm1'), view);
      const fsck = await run('e2fsck', ['-fn', view], { timeoutMs: 60_000 });
      expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
      const cat = await run('debugfs', ['-R', `cat /root/${label}-root.txt`, view], { timeoutMs: 30_000 });
      expect(cat.stdout.trim()).toBe(token);
      const check = await run(process.execPath, [CLI_PATH, 'check', ...checkArgs, path.join(overlays, 'vm1.cow')], { timeoutMs: 60_000, env });
      expect(check.code, `cownbd check vm1.cow\n${check.stdout}${check.stderr}`).toBe(0);
      expect(server.stderr().split('\n').filter((l) => /"level":(50|60)\b/.test(l)), `${label} server errors`).toEqual([]);
    } finally {
      await server.stop();
    }
  }

  it('root on NBD from a compressed qcow2 golden image: the machine boots, its writes land in its cow overlay, the qcow2 is never modified', async () => {
    // The golden image as distributions ship it: qcow2, zlib-compressed (qemu-img convert -c).
    const qcow2 = path.join(dir, 'golden.qcow2');
    const conv = await run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', golden, qcow2], { timeoutMs: 300_000 });
    expect(conv.code, conv.stderr).toBe(0);
    const qcow2Sha = await sha256File(qcow2);
    await rootBootOver('qcow2', ['--base', qcow2, '--base-format', 'qcow2'], ['--backing-format', 'qcow2']);
    expect(await sha256File(qcow2)).toBe(qcow2Sha);
  }, 600_000);

  it('root on NBD from a golden image in object storage (s3:// on a local S3 server): boots, writes land in the overlay, the bucket is unchanged', async () => {
    const s3 = await startS3Server();
    try {
      const env = { ...process.env, ...S3_ENV };
      const pub = await run(process.execPath, [CLI_PATH, 'publish', golden, 's3://golden/kernel', ...s3.flags], { timeoutMs: 300_000, env });
      expect(pub.code, pub.stderr).toBe(0);
      const objects = await storedFiles(s3.dir);
      await rootBootOver('s3', ['--base', 's3://golden/kernel', ...s3.flags, '--cache-dir', path.join(dir, 's3-cache')], [...s3.flags], env);
      expect(await storedFiles(s3.dir), 'the bucket is unchanged').toEqual(objects);
    } finally {
      await s3.close();
    }
  }, 600_000);

  it('-t 5 with the server paused, a server restart (fsynced writes survive, the device must be re-attached), a 16 GiB disk', async () => {
    // Its own server (same base, own overlay dir), so its deliberately broken connections
    // do not mix with the other cases' logs.
    const rsDir = path.join(dir, 'restart-overlays');
    const rsArgs = ['--base', golden, '--overlay-dir', rsDir];
    let rs = await startServer(rsArgs, { unix: true });
    // A 16 GiB disk (sparse base): whole-device discard and mkfs's multi-GiB TRIMs.
    const bigBase = path.join(dir, 'big-base.raw');
    await writeFile(bigBase, '');
    await truncate(bigBase, 16 * GiB);
    const bigBefore = await stat(bigBase);
    const bigDir = path.join(dir, 'big-overlays');
    const big = await startServer(['--base', bigBase, '--overlay-dir', bigDir], { unix: true });
    const events: string[] = [];
    try {
      const r = await bootKitGuest({
        assets: kit,
        dir,
        ports: ['r0', 'r1', 'ctl', 'b0'],
        target: (port) => ({ path: (port === 'b0' ? big : rs).socketPath! }),
        onControl: async (cmd) => {
          events.push(cmd);
          if (cmd === 'pause') rs.proc.kill('SIGSTOP');
          else if (cmd === 'resume') rs.proc.kill('SIGCONT');
          else if (cmd === 'restart') {
            await rs.stop('SIGKILL');
            rs = await startServer(rsArgs, { unix: true });
          } else throw new Error(`unknown host command ${cmd}`);
        },
        steps: `
bridge /run/r.sock r0 r1
attach() { timeout 60 nbd-client -u /run/r.sock /dev/nbd0 -N rs1 -t 5 "$@" || { echo "ATTACH-FAILED"; ps; exit 1; }; }
dd if=/dev/urandom of=/tmp/pat bs=64k count=16 2>/dev/null
echo "PAT $(sha256sum </tmp/pat | cut -d' ' -f1)"
attach
dd if=/tmp/pat of=/dev/nbd0 bs=64k seek=16 oflag=direct conv=fsync 2>/dev/null
# The server stops answering: the request times out after -t 5 seconds, with an error.
host pause
t0=$(date +%s)
if dd if=/dev/nbd0 of=/dev/null bs=64k skip=200 count=1 iflag=direct 2>/dev/null; then echo "PAUSED-READ ok"; else echo "PAUSED-READ failed"; fi
echo "PAUSED-SECONDS $(( $(date +%s) - t0 ))"
host resume
nbd-client -d /dev/nbd0 || true
sleep 1
attach -p
echo "AFTER-TIMEOUT $(dd if=/dev/nbd0 bs=64k skip=16 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
dd if=/tmp/pat of=/dev/nbd0 bs=64k seek=48 oflag=direct conv=fsync 2>/dev/null
# kill -9 and a new server: does the device resume (-p)? Debian 12: it does not.
host restart
if dd if=/dev/nbd0 of=/dev/null bs=64k skip=300 count=1 iflag=direct 2>/dev/null; then echo "RESUMED yes"; else echo "RESUMED no"; fi
nbd-client -d /dev/nbd0 || true
sleep 1
attach
echo "AFTER-RESTART-1 $(dd if=/dev/nbd0 bs=64k skip=16 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "AFTER-RESTART-2 $(dd if=/dev/nbd0 bs=64k skip=48 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
nbd-client -d /dev/nbd0
# 16 GiB: discard everything, make a filesystem (lazy init: TCG is slow), use it.
bridge /run/b.sock b0
nbd-client -u /run/b.sock /dev/nbd1 -N big1 -t 120
echo "BIGSIZE $(blockdev --getsize64 /dev/nbd1)"
blkdiscard /dev/nbd1
mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 /dev/nbd1
mount -t ext4 /dev/nbd1 /mnt
echo big-token >/mnt/big.txt
umount /mnt
mount -t ext4 -o ro /dev/nbd1 /mnt
echo "BIGTOKEN $(cat /mnt/big.txt)"
umount /mnt
nbd-client -d /dev/nbd1
echo DONE
`,
      });
      timings.add('guest 4 (-t 5 paused, restart)', r.ms);
      expectGuestOk(r, 'timeout/restart guest', rs.stderr());
      console.log(`[e2e] kernel client after a server restart: ${r.output.filter((l) => /^(RESUMED|PAUSED)/.test(l)).join(', ')}`);
      expect(events).toEqual(['pause', 'resume', 'restart']);
      const pat = guestValue(r, 'PAT');
      expect(r.output).toContain('PAUSED-READ failed');
      // -t 5: the timeout fires after about 5 s (TCG and load add a few).
      const paused = Number(guestValue(r, 'PAUSED-SECONDS'));
      expect(paused).toBeGreaterThanOrEqual(4);
      expect(paused).toBeLessThan(40);
      expect(guestValue(r, 'AFTER-TIMEOUT')).toBe(pat);
      expect(guestValue(r, 'AFTER-RESTART-1')).toBe(pat);
      expect(guestValue(r, 'AFTER-RESTART-2')).toBe(pat);
      expect(r.output).toContain('DONE');

      expect(guestValue(r, 'BIGSIZE')).toBe(String(16 * GiB));
      expect(guestValue(r, 'BIGTOKEN')).toBe('big-token');
      const bigConn = byPort(r.connections, 'b0');
      expect(bigConn).toHaveLength(1);
      expect(bigConn[0]!.wire.counts.DISC).toBe(1);
      // blkdiscard and mkfs each discard the whole device, in TRIMs of GiBs.
      expect(bigConn[0]!.wire.trimmedBytes).toBeGreaterThanOrEqual(2 * 16 * GiB);
      expect(bigConn[0]!.wire.maxTrimLength).toBeGreaterThanOrEqual(2 * GiB);
      await big.stop();
      const bigAfter = await stat(bigBase);
      expect({ size: bigAfter.size, blocks: bigAfter.blocks, mtimeMs: bigAfter.mtimeMs }, 'the 16 GiB base is untouched').toEqual({
        size: bigBefore.size,
        blocks: bigBefore.blocks,
        mtimeMs: bigBefore.mtimeMs,
      });
      const bigCow = path.join(bigDir, 'big1.cow');
      expect((await stat(bigCow)).blocks * 512, 'discards allocate nothing').toBeLessThan(1 * GiB);
      const bigCheck = await run(process.execPath, [CLI_PATH, 'check', bigCow], { timeoutMs: 120_000 });
      expect(bigCheck.code, bigCheck.stdout + bigCheck.stderr).toBe(0);
      expect(big.stderr().split('\n').filter((l) => /"level":(40|50|60)\b/.test(l)), '16 GiB server warnings/errors').toEqual([]);

      const view = await readFile(await (async () => {
        const f = path.join(dir, 'rs1.img');
        await dumpExport(rs.uri('rs1'), f);
        return f;
      })());
      const expected = Buffer.from(goldenBytes);
      view.copy(expected, 1 * MiB, 1 * MiB, 2 * MiB);
      view.copy(expected, 3 * MiB, 3 * MiB, 4 * MiB);
      expect(await sha256(view.subarray(1 * MiB, 2 * MiB))).toBe(pat);
      expect(await sha256(view.subarray(3 * MiB, 4 * MiB))).toBe(pat);
      expect(view.equals(expected), 'rs1 outside the two written MiB equals the base').toBe(true);
      expect(await sha256File(golden)).toBe(goldenSha);
      await rs.stop();
      const check = await run(process.execPath, [CLI_PATH, 'check', path.join(rsDir, 'rs1.cow')], { timeoutMs: 60_000 });
      expect(check.code, check.stdout + check.stderr).toBe(0);
      expect(rs.stderr().split('\n').filter((l) => /"level":(50|60)\b/.test(l)), 'server errors').toEqual([]);
    } finally {
      rs.proc.kill('SIGCONT');
      await rs.stop().catch(() => {});
      await big.stop().catch(() => {});
    }
  }, 600_000);
});
