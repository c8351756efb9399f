/**
 * Journey 1 from object storage: the golden image is published to an S3-compatible store
 * (s3rver on 127.0.0.1), and cownbd serves per-machine overlays over `--base s3://…`.
 * Real guests (Debian cloud kernel under QEMU/TCG) boot over NBD:
 *   - vm1 writes, powers off, boots again and sees its writes;
 *   - vm2 does not see them;
 *   - the bucket never changes (every object's size and content hash before = after);
 *   - only chunks the guests touched were fetched (fewer bytes than the image holds).
 * Bounded like boot-vm.test.ts (120 s per QEMU boot).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runTool, mustSucceed } from '../helpers/clients.js';
import { CLI_PATH, startServer, type RunningServer } from '../helpers/server.js';
import { S3_ENV, startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { requireTool } from '../helpers/tools.js';
import { bootQemu, copyGolden, makeWorkDir, prepareAssets, removeDir, Timings, type BootResult, type GuestAssets } from './support/harness.js';

const canBoot = requireTool('qemu-system-x86_64') && requireTool('mkfs.ext4') && requireTool('debugfs') && requireTool('busybox');

function expectBooted(r: BootResult, what: string): void {
  if (r.code !== 0) throw new Error(`${what}: guest exit ${r.code} after ${r.ms} ms\n${r.console}`);
}

/** name:sha256 of every file s3rver stores (objects and their metadata). */
function bucketFingerprint(s3: S3TestServer): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(`${path.relative(s3.dir, p)}:${createHash('sha256').update(readFileSync(p)).digest('hex')}`);
    }
  };
  walk(s3.dir);
  return out.sort();
}

describe.runIf(canBoot)('journey 1 from object storage: network boot over an s3:// golden image', () => {
  const timings = new Timings();
  let assets: GuestAssets;
  let dir: string;
  let s3: S3TestServer;
  let server: RunningServer | undefined;
  const token = randomBytes(8).toString('hex');

  beforeAll(async () => {
    assets = await prepareAssets({ qemu: true });
    dir = await makeWorkDir('boot-s3');
    s3 = await startS3Server();
  }, 300_000);

  afterAll(async () => {
    await server?.stop().catch(() => {});
    await s3?.close();
    timings.print('journey 1 (s3)');
    await removeDir(dir);
  });

  it('machines boot from a published image, keep their own writes, and never change the bucket', async () => {
    const golden = await copyGolden(assets, dir);
    const pub = mustSucceed(await runTool(process.execPath, [CLI_PATH, 'publish', golden, 's3://golden/debian', '--json', ...s3.flags], { env: S3_ENV }));
    const published = JSON.parse(pub.stdout) as { uri: string; uploadedBytes: number };
    const before = bucketFingerprint(s3);
    const overlays = path.join(dir, 'overlays');
    await mkdir(overlays);
    server = await startServer(['--base', 's3://golden/debian', '--overlay-dir', overlays, ...s3.flags, '--cache-dir', path.join(dir, 'cache')], { env: S3_ENV });
    s3.resetStats();

    const first = await bootQemu(server.uri('vm1'), `echo "${token}" > /root/journey.txt\nsync\necho "RELEASE $(cat /etc/golden-release)"\n`, dir);
    timings.add('qemu boot vm1 #1 (write)', first.ms);
    expectBooted(first, 'vm1 first boot');
    expect(first.output).toContain('RELEASE cownbd-e2e golden v1');
    const fetched = s3.stats.chunkGetBytes;

    const second = await bootQemu(server.uri('vm1'), `echo "TOKEN $(cat /root/journey.txt)"\n`, dir);
    timings.add('qemu boot vm1 #2 (read back, warm cache)', second.ms);
    expectBooted(second, 'vm1 second boot');
    expect(second.output).toContain(`TOKEN ${token}`);

    const other = await bootQemu(server.uri('vm2'), `if [ -e /root/journey.txt ]; then echo "VM2 SEES"; else echo "VM2 CLEAN"; fi\n`, dir);
    timings.add('qemu boot vm2 (isolation)', other.ms);
    expectBooted(other, 'vm2 boot');
    expect(other.output).toContain('VM2 CLEAN');

    // The overlay pins the version it was made over; the bucket is unchanged.
    expect(readFileSync(path.join(overlays, 'vm1.cow')).subarray(0, 1100).toString('latin1')).toContain(published.uri);
    await server.stop();
    server = undefined;
    expect(bucketFingerprint(s3)).toEqual(before);
    // A boot reads only part of the image.
    console.log(`[e2e] s3 journey: image stores ${published.uploadedBytes} bytes; the first boot fetched ${fetched}`);
    expect(fetched).toBeGreaterThan(0);
    expect(fetched).toBeLessThan(published.uploadedBytes);
  }, 600_000);
});
