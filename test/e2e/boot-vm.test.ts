/**
 * Journey 1: boot machines over the network from one golden image.
 *
 * One read-only golden ext4 image, one copy-on-write overlay per VM served by cownbd over
 * NBD. Real guests (Debian cloud kernel under QEMU/TCG; UML for the cow file itself) write
 * files, power off and boot again. What must hold:
 *   - vm1's writes survive vm1's reboot (random token and a 1 MiB random blob read back);
 *   - vm2, booted from the same golden image, does not see them;
 *   - the golden image's sha256 never changes;
 *   - the server is then killed with SIGKILL: flushed guest writes must survive that;
 *   - the overlay cownbd wrote is a valid UML cow: `linux.uml ubd0=vm1.cow,golden.img` boots
 *     it and sees vm1's files, uml_moo's merge passes `e2fsck -fn`, and what UML wrote is seen
 *     by the next network boot.
 * Each boot is bounded (120 s QEMU, 60 s UML); a boot took 4-17 s under TCG here
 * (2 shared cores), the whole file 20-65 s.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTool } from '../helpers/tools.js';
import {
  bootQemu,
  bootUml,
  copyGolden,
  makeWorkDir,
  prepareAssets,
  removeDir,
  run,
  sha256File,
  Timings,
  type BootResult,
  type GuestAssets,
} from './support/harness.js';
import { startVmServer, type VmServer } from './support/journey-servers.js';

const canBoot =
  requireTool('qemu-system-x86_64') &&
  requireTool('mkfs.ext4') &&
  requireTool('debugfs') &&
  requireTool('busybox');
const canUml = canBoot && requireTool('linux.uml') && requireTool('uml_moo');

function expectBooted(r: BootResult, what: string): void {
  if (r.code !== 0) throw new Error(`${what}: guest exit ${r.code} after ${r.ms} ms\n${r.console}`);
}

describe.runIf(canBoot)('journey 1: network boot from one golden image', () => {
  const timings = new Timings();
  let assets: GuestAssets;
  let dir: string;
  let golden: string;
  let goldenSha: string;
  let server: VmServer | undefined;
  /** vm1's overlay as kept by the server of the first test (undefined for a stand-in). */
  let vm1Cow: string | undefined;
  const token = randomBytes(8).toString('hex');

  beforeAll(async () => {
    const t0 = Date.now();
    assets = await prepareAssets({ qemu: true });
    timings.add('prepare assets (cached after 1st run)', Date.now() - t0);
    dir = await makeWorkDir('boot');
    golden = await copyGolden(assets, dir);
    goldenSha = await sha256File(golden);
  }, 300_000);

  afterAll(async () => {
    await server?.stop().catch(() => {});
    timings.print('journey 1');
    await removeDir(dir);
  });

  it('vm1 keeps its writes across reboots, vm2 does not see them, golden is untouched', async () => {
    server = await startVmServer(golden, dir, ['vm1', 'vm2']);
    console.log(`[e2e] journey 1 server: ${server.kind}`);
    vm1Cow = server.overlayPath('vm1');

    const first = await bootQemu(
      server.uri('vm1'),
      `echo "${token}" > /root/journey.txt
dd if=/dev/urandom of=/root/blob bs=64k count=16 2>/dev/null
sync
echo "BLOB $(sha256sum /root/blob | cut -d' ' -f1)"
echo "RELEASE $(cat /etc/golden-release)"
`,
      dir,
    );
    timings.add('qemu boot vm1 #1 (write)', first.ms);
    expectBooted(first, 'vm1 first boot');
    expect(first.output).toContain('RELEASE cownbd-e2e golden v1');
    const blob = first.output.find((l) => l.startsWith('BLOB '))?.slice(5);
    expect(blob).toMatch(/^[0-9a-f]{64}$/);

    const second = await bootQemu(
      server.uri('vm1'),
      `echo "TOKEN $(cat /root/journey.txt)"
echo "BLOB $(sha256sum /root/blob | cut -d' ' -f1)"
`,
      dir,
    );
    timings.add('qemu boot vm1 #2 (read back)', second.ms);
    expectBooted(second, 'vm1 second boot');
    expect(second.output).toContain(`TOKEN ${token}`);
    expect(second.output).toContain(`BLOB ${blob}`);

    const other = await bootQemu(
      server.uri('vm2'),
      `if [ -e /root/journey.txt ]; then echo "VM2 SEES $(cat /root/journey.txt)"; else echo "VM2 CLEAN"; fi
echo "RELEASE $(cat /etc/golden-release)"
echo vm2 > /root/vm2.txt
`,
      dir,
    );
    timings.add('qemu boot vm2 (isolation)', other.ms);
    expectBooted(other, 'vm2 boot');
    expect(other.output).toContain('VM2 CLEAN');
    expect(other.output).toContain('RELEASE cownbd-e2e golden v1');

    // Overlays are made on first connect, one per machine, nothing else.
    if (server.kind === 'cownbd') expect(await server.overlays()).toEqual(['vm1.cow', 'vm2.cow']);

    // kill -9, not a graceful stop: every guest write was flushed (guest sync, remount ro,
    // QEMU's flush at exit), so the next test must find all of it in the overlay.
    await server.crash();
    server = undefined;
    expect(await sha256File(golden)).toBe(goldenSha);
  }, 300_000);

  it.runIf(canUml)('the overlay cownbd wrote is a UML cow that UML boots, and UML writes come back over NBD', async ({ skip }) => {
    const cow = vm1Cow;
    if (!cow) {
      console.warn('\n*** e2e: no vm1 overlay (stand-in server, or the first test did not run); UML step skipped ***\n');
      skip();
      return;
    }
    expect(existsSync(cow)).toBe(true);

    // Independent reader: uml_moo merges cow+backing itself; the merged fs must be clean and
    // hold vm1's file. This checks cownbd's bytes without going through cownbd's reader.
    const merged = path.join(dir, 'vm1-merged.img');
    const moo = await run('uml_moo', [cow, merged], { timeoutMs: 60_000 });
    expect(moo.code, moo.stderr).toBe(0);
    const fsck = await run('e2fsck', ['-fn', merged], { timeoutMs: 60_000 });
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    const cat = await run('debugfs', ['-R', 'cat /root/journey.txt', merged], { timeoutMs: 30_000 });
    expect(cat.stdout.trim()).toBe(token);

    const uml = await bootUml(
      `${cow},${golden}`,
      `echo "UML TOKEN $(cat /root/journey.txt)"
echo "from-uml" > /root/uml.txt
`,
      dir,
    );
    timings.add('uml boot of vm1.cow', uml.ms);
    expectBooted(uml, 'UML boot');
    expect(uml.output).toContain(`UML TOKEN ${token}`);
    expect(await sha256File(golden)).toBe(goldenSha);

    // Round trip: what UML wrote into the cow is served back by cownbd.
    server = await startVmServer(golden, dir, ['vm1', 'vm2']);
    const back = await bootQemu(server.uri('vm1'), `echo "UMLFILE $(cat /root/uml.txt)"\necho "TOKEN $(cat /root/journey.txt)"\n`, dir);
    timings.add('qemu boot vm1 #3 (sees UML write)', back.ms);
    expectBooted(back, 'vm1 boot after UML');
    expect(back.output).toContain('UMLFILE from-uml');
    expect(back.output).toContain(`TOKEN ${token}`);
    await server.stop();
    server = undefined;
    expect(await sha256File(golden)).toBe(goldenSha);
  }, 300_000);
});
