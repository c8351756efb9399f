/**
 * Journey 2: CI jobs mount throwaway test disks with scripts/ci-mount.sh (no kernel nbd
 * module: qemu-storage-daemon's NBD client → FUSE file → loop device → mount).
 *
 * Job 1 attaches the golden disk, writes files, unmounts, and checks what reached the device
 * through the whole chain (`e2fsck -fn` exit 0, debugfs reads the files back), then detaches.
 * Job 2 attaches again and must see the pristine golden filesystem. The golden image's
 * sha256 never changes. A failed attach must leave nothing behind (no mount, no loop device,
 * no daemon, no state).
 */
import { randomBytes, createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTool } from '../helpers/tools.js';
import { CI_MOUNT, copyGolden, makeWorkDir, prepareAssets, removeDir, run, sha256File, Timings, type RunResult } from './support/harness.js';
import { startDiskServer, type DiskServer } from './support/journey-servers.js';

/** Retry an assertion for up to `ms` (the server cleans up asynchronously after a disconnect). */
async function expectEventually(check: () => Promise<void>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Like requireTool for things that are not commands: skip locally, fail under CI=true. */
function requireCondition(label: string, ok: boolean): boolean {
  if (ok) return true;
  if (process.env.CI === 'true') throw new Error(`required for e2e: ${label} (CI=true: missing requirements are failures)`);
  console.warn(`\n*** SKIPPING tests that need ${label} ***\n`);
  return false;
}

const canMount =
  requireTool('qemu-storage-daemon') &&
  requireTool('losetup') &&
  requireTool('mkfs.ext4') &&
  requireTool('e2fsck') &&
  requireTool('debugfs') &&
  requireCondition('/dev/fuse', existsSync('/dev/fuse')) &&
  requireCondition('root (mount/losetup)', process.getuid?.() === 0);

describe.runIf(canMount)('journey 2: CI mounts of throwaway test disks', () => {
  const timings = new Timings();
  let dir: string;
  let golden: string;
  let goldenSha: string;
  let server: DiskServer | undefined;
  let env: NodeJS.ProcessEnv;
  const attached = new Set<string>();

  const ciMount = async (...args: string[]): Promise<RunResult> => {
    const r = await run('bash', [CI_MOUNT, ...args], { timeoutMs: 90_000, env });
    timings.add(`ci-mount ${args[0]}`, r.ms);
    return r;
  };
  const attach = async (uri: string, mp: string): Promise<void> => {
    attached.add(mp);
    const r = await ciMount('attach', uri, mp);
    if (r.code !== 0) throw new Error(`attach ${uri} failed (${r.code}):\n${r.stderr}\nserver log:\n${server?.log() ?? ''}`);
  };
  const deviceOf = async (mp: string): Promise<string> => {
    const status = await ciMount('status', mp);
    const device = /^DEVICE=(\/dev\/loop\d+)$/m.exec(status.stdout)?.[1];
    if (status.code !== 0 || !device) throw new Error(`ci-mount status ${mp}: ${status.code}\n${status.stdout}${status.stderr}`);
    return device;
  };
  const isMounted = async (mp: string): Promise<boolean> => (await run('findmnt', ['-rn', '--mountpoint', mp])).code === 0;

  beforeAll(async () => {
    const assets = await prepareAssets({ qemu: false });
    dir = await makeWorkDir('cimount');
    golden = await copyGolden(assets, dir);
    goldenSha = await sha256File(golden);
    // A private state dir: the test must not see (or disturb) real ci-mount attachments.
    env = { ...process.env, CI_MOUNT_STATE_DIR: path.join(dir, 'state') };
  }, 120_000);

  afterAll(async () => {
    for (const mp of attached) await run('bash', [CI_MOUNT, 'detach', '-f', mp], { timeoutMs: 60_000, env });
    await server?.stop().catch(() => {});
    timings.print('journey 2');
    await removeDir(dir);
  });

  it('job 1 writes and fscks its disk; job 2 sees the pristine golden image', async () => {
    server = await startDiskServer(golden, dir);
    console.log(`[e2e] journey 2 server: ${server.kind}`);
    const token = randomBytes(8).toString('hex');
    const blob = randomBytes(6 * 1024 * 1024 + 123);
    const blobSha = createHash('sha256').update(blob).digest('hex');

    // ---- job 1
    const mp1 = path.join(dir, 'job1');
    const job1 = await server.beginJob();
    await attach(job1.uri, mp1);
    expect(await readFile(path.join(mp1, 'etc/golden-release'), 'utf8')).toBe('cownbd-e2e golden v1\n');
    await mkdir(path.join(mp1, 'job'));
    await writeFile(path.join(mp1, 'job/token.txt'), `${token}\n`);
    await writeFile(path.join(mp1, 'job/blob.bin'), blob);

    const device = await deviceOf(mp1);

    // Unmount but stay attached: read what actually reached the device, not the page cache.
    expect((await run('umount', [mp1])).code).toBe(0);
    await run('blockdev', ['--flushbufs', device]);
    const fsck = await run('e2fsck', ['-fn', device], { timeoutMs: 60_000 });
    timings.add('e2fsck -fn via loop/FUSE/NBD', fsck.ms);
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    const cat = await run('debugfs', ['-R', 'cat /job/token.txt', device]);
    expect(cat.stdout.trim()).toBe(token);
    const dumped = path.join(dir, 'blob.out');
    await run('debugfs', ['-R', `dump /job/blob.bin ${dumped}`, device]);
    expect(await sha256File(dumped)).toBe(blobSha);

    const det1 = await ciMount('detach', mp1);
    expect(det1.code, det1.stderr).toBe(0);
    attached.delete(mp1);
    expect((await ciMount('status', mp1)).code).toBe(1);
    const loops = await run('losetup', ['-nO', 'BACK-FILE', device]);
    expect(loops.stdout).not.toContain(path.join(dir, 'state'));
    await job1.end();

    // ---- job 2: a fresh job must not see job 1's files
    const mp2 = path.join(dir, 'job2');
    const job2 = await server.beginJob();
    await attach(job2.uri, mp2);
    expect(await readFile(path.join(mp2, 'etc/golden-release'), 'utf8')).toBe('cownbd-e2e golden v1\n');
    expect(existsSync(path.join(mp2, 'job'))).toBe(false);
    await writeFile(path.join(mp2, 'job2.txt'), 'second job\n');
    const det2 = await ciMount('detach', '--fsck', mp2);
    expect(det2.code, det2.stderr).toBe(0);
    attached.delete(mp2);
    expect(await isMounted(mp2)).toBe(false);
    await job2.end();

    await server.stop();
    server = undefined;
    expect(await sha256File(golden)).toBe(goldenSha);
  }, 300_000);

  it('two jobs attached at the same time do not see each other', async () => {
    server ??= await startDiskServer(golden, dir);
    const token = randomBytes(6).toString('hex');
    const [mpA, mpB] = [path.join(dir, 'parA'), path.join(dir, 'parB')];
    const jobA = await server.beginJob();
    await attach(jobA.uri, mpA);
    await writeFile(path.join(mpA, 'owner.txt'), `job A ${token}\n`);
    expect((await run('sync', ['-f', path.join(mpA, 'owner.txt')])).code).toBe(0);

    // B connects after A's write reached the server: a shared overlay would show it to B.
    const jobB = await server.beginJob();
    await attach(jobB.uri, mpB);
    expect(existsSync(path.join(mpB, 'owner.txt'))).toBe(false);
    // Same path, same size: in one shared overlay this would land on A's blocks.
    await writeFile(path.join(mpB, 'owner.txt'), `job B ${token}\n`);
    expect((await run('sync', ['-f', path.join(mpB, 'owner.txt')])).code).toBe(0);

    // --ephemeral keeps one overlay file per live connection, and deletes it on disconnect.
    if (server.overlayFiles) expect(await server.overlayFiles()).toHaveLength(2);

    for (const [mp, who] of [[mpA, 'A'], [mpB, 'B']] as const) {
      const device = await deviceOf(mp);
      expect((await run('umount', [mp])).code).toBe(0);
      await run('blockdev', ['--flushbufs', device]);
      const cat = await run('debugfs', ['-R', 'cat /owner.txt', device]);
      expect(cat.stdout).toBe(`job ${who} ${token}\n`);
      const fsck = await run('e2fsck', ['-fn', device], { timeoutMs: 60_000 });
      expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    }
    for (const mp of [mpA, mpB]) {
      const d = await ciMount('detach', mp);
      expect(d.code, d.stderr).toBe(0);
      attached.delete(mp);
    }
    await jobA.end();
    await jobB.end();
    if (server.overlayFiles) await expectEventually(async () => expect(await server!.overlayFiles!()).toEqual([]));
    await server.stop();
    server = undefined;
    expect(await sha256File(golden)).toBe(goldenSha);
  }, 120_000);

  it('attach -r gives a read-only mount', async () => {
    server ??= await startDiskServer(golden, dir);
    const job = await server.beginJob();
    const mp = path.join(dir, 'ro');
    attached.add(mp);
    const r = await ciMount('attach', '-r', job.uri, mp);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(path.join(mp, 'etc/golden-release'), 'utf8')).toBe('cownbd-e2e golden v1\n');
    await expect(writeFile(path.join(mp, 'nope.txt'), 'x')).rejects.toThrow(/EROFS|read-only/);
    const d = await ciMount('detach', mp);
    expect(d.code, d.stderr).toBe(0);
    attached.delete(mp);
    await job.end();
    await server.stop();
    server = undefined;
    expect(await sha256File(golden)).toBe(goldenSha);
  }, 120_000);

  it('losing the server while attached: detach reports it and still cleans up', async () => {
    server ??= await startDiskServer(golden, dir);
    const job = await server.beginJob();
    const mp = path.join(dir, 'lost');
    await attach(job.uri, mp);
    const status = await ciMount('status', mp);
    const qsdPid = Number(/^QSD_PID=(\d+)$/m.exec(status.stdout)?.[1]);
    expect(qsdPid).toBeGreaterThan(0);
    await writeFile(path.join(mp, 'unsaved.txt'), 'x'.repeat(100_000));
    await job.end(); // the server (or, with --ephemeral, the whole server) goes away
    await server.stop();
    server = undefined;

    const d = await ciMount('detach', '-f', mp);
    expect(d.code).not.toBe(0); // the final flush could not reach a server
    expect(d.stderr).toMatch(/fsync .* failed/);
    attached.delete(mp);
    expect(await isMounted(mp)).toBe(false);
    expect((await ciMount('status', mp)).code).toBe(1);
    expect(existsSync(`/proc/${qsdPid}`)).toBe(false);
    const fuse = await run('findmnt', ['-rn', '-t', 'fuse']);
    expect(fuse.stdout).not.toContain(path.join(dir, 'state'));
    expect(await sha256File(golden)).toBe(goldenSha);
  }, 120_000);

  it('a failed attach cleans up after itself', async () => {
    const mp = path.join(dir, 'broken');
    const r = await ciMount('attach', `nbd+unix:///disk?socket=${path.join(dir, 'no-such.sock')}`, mp);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/could not connect/);
    expect(await isMounted(mp)).toBe(false);
    expect((await ciMount('status', mp)).code).toBe(1);
    const list = await ciMount('list');
    expect(list.stdout).not.toContain(mp);

    const bad = await ciMount('attach', 'http://example.invalid/disk', mp);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unsupported URI/);
  }, 60_000);
});
