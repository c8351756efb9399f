/**
 * Fleet machines across real servers (docs/fleet.md), two `cownbd serve --overlay-store`
 * processes over one test S3 server (s3rver with conditional PUTs), real NBD clients:
 *
 *   - a clean move: a client writes on A and disconnects (A ships and releases the lease);
 *     B serves the machine at once, with those bytes;
 *   - kill -9 of the owner: every byte a FLUSH acknowledged on A is read back on B, which
 *     takes the machine over within W (lease TTL + drift margin) + a few seconds;
 *   - split brain: A is SIGSTOPped past the TTL, B takes the machine and writes; on SIGCONT
 *     A acknowledges no write for it (the client gets an error), publishes nothing, and the
 *     machine's head stays B's.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { machineKeys } from '../../src/fleet/fleet-keys.js';
import { takeoverWaitMs } from '../../src/fleet/lease.js';
import { readHead } from '../../src/fleet/machine-head.js';
import type { StoreClient } from '../../src/objectstore/store-client.js';
import { mustSucceed, qemuIo, runTool } from '../helpers/clients.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { CLI_PATH, findNbdPython, requireNbdPython, type RunningServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { MiB, publish, serveS3 } from '../objectstore/s3-helpers.js';
import { testClient } from './fleet-store.js';

const hasTools = requireTool('qemu-io') && requireNbdPython();
const TTL_S = 3;
const W_MS = takeoverWaitMs(TTL_S * 1000);
const STORE = { bucket: 'golden', prefix: 'fleet' };
/** s3rver in the test process answers slowly on a loaded machine: a longer deadline than serveS3's 3 s (given last: it wins). */
const SLOW_STORE = ['--s3-timeout', '15000'];

/** A python3-libnbd client kept open: writes+flushes regions, says "ready", then obeys stdin. */
const HOLDER = String.raw`
import nbd, sys
h = nbd.NBD()
h.connect_uri(URI)
for i in range(REGIONS):
    h.pwrite(bytes([0x40 + i]) * 65536, i * 1048576)
    h.flush()
h.pwrite(b'\x99' * 65536, 7 * 1048576)  # never flushed: may be lost
print('ready', flush=True)
for line in sys.stdin:
    try:
        h.pwrite(b'\x22' * 65536, 0)
        h.flush()
        print('acked', flush=True)
    except Exception as e:
        print('error ' + str(e).replace('\n', ' '), flush=True)
`;

function holder(uri: string, regions: number): { proc: ChildProcessWithoutNullStreams; line(): Promise<string>; stderr(): string } {
  const proc = spawn(findNbdPython()!, ['-c', `URI = ${JSON.stringify(uri)}\nREGIONS = ${regions}\n${HOLDER}`]) as ChildProcessWithoutNullStreams;
  let err = '';
  proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  return {
    proc,
    stderr: () => err,
    async line() {
      const r = await lines.next();
      if (r.done) throw new Error(`nbd client ended: ${err}`);
      return r.value;
    },
  };
}

describe.runIf(hasTools)('fleet machines over two real servers', () => {
  let s3: S3TestServer;
  let tmp: TempDir;
  let client: StoreClient;
  const servers: RunningServer[] = [];

  const serve = async (name: string, extra: string[] = []): Promise<RunningServer> => {
    const srv = await serveS3(s3, ['--base', 's3://golden/base', '--overlay-dir', tmp.file(`${name}-machines`), '--overlay-store', 's3://golden/fleet', '--lease-ttl', String(TTL_S), '-p', '0', ...extra], tmp.file(`${name}-cache`), SLOW_STORE);
    servers.push(srv);
    return srv;
  };

  beforeAll(async () => {
    s3 = await startS3Server();
    tmp = makeTempDir('cownbd-fleet-failover-');
    await publish(s3, createRawImage(tmp.file('base.raw'), 8 * MiB, [[0, 8 * MiB]], 23), 's3://golden/base');
    client = testClient(s3.endpoint);
  });
  afterAll(async () => {
    for (const s of servers) await s.stop('SIGKILL').catch(() => {});
    client?.close();
    await s3?.close();
    tmp?.cleanup();
  });

  it('a clean move: written on A, disconnected, served by B at once', async () => {
    const [a, b] = [await serve('move-a'), await serve('move-b')];
    mustSucceed(await qemuIo(a.uri('vm-move'), ['write -P 0x33 1M 64k']));
    const started = performance.now();
    const r = await qemuIo(b.uri('vm-move'), ['read -P 0x33 1M 64k'], { readOnly: true });
    mustSucceed(r);
    expect(r.patternFailures).toBe(0);
    // The lease was released: B took it as free (no TTL wait), as its log says.
    expect(b.stderr()).toMatch(/"generation":2,"previousOwner":null,"msg":"machine lease taken"/);
    expect(performance.now() - started).toBeLessThan(W_MS + 10_000);
    expect(await readHead(client, machineKeys(STORE, 'vm-move'))).toMatchObject({ generation: 2 });
    await Promise.all([a.stop(), b.stop()]);
  });

  it('kill -9 of the owner: B takes over within W + a few s with every FLUSH-acknowledged byte', async () => {
    const [a, b] = [await serve('kill-a'), await serve('kill-b')];
    const h = holder(a.uri('vm-kill'), 6);
    try {
      expect(await h.line()).toBe('ready');
      a.proc.kill('SIGKILL');
      const killed = performance.now();
      const reads = Array.from({ length: 6 }, (_, i) => `read -P ${0x40 + i} ${i}M 64k`);
      const r = await qemuIo(b.uri('vm-kill'), reads, { readOnly: true, timeoutMs: W_MS + 30_000 });
      const took = performance.now() - killed;
      mustSucceed(r);
      expect(r.patternFailures).toBe(0);
      expect(took).toBeLessThan(W_MS + 8_000);
      expect(b.stderr()).toContain('"previousOwner"');
    } finally {
      h.proc.kill('SIGKILL');
      await b.stop();
    }
  });

  it('split brain: A paused past the TTL acknowledges no write and publishes nothing after B took over', async () => {
    const [a, b] = [await serve('split-a'), await serve('split-b')];
    const keys = machineKeys(STORE, 'vm-split');
    const h = holder(a.uri('vm-split'), 2);
    try {
      expect(await h.line()).toBe('ready');
      const before = (await readHead(client, keys))!;
      expect(before.generation).toBe(1);
      a.proc.kill('SIGSTOP');
      // B takes the machine (after W) and writes its own data there, flushed (qemu-io flushes on exit).
      mustSucceed(await qemuIo(b.uri('vm-split'), ['read -P 0x41 1M 64k', 'write -P 0x55 0 64k'], { timeoutMs: W_MS + 30_000 }));
      const afterB = (await readHead(client, keys))!;
      expect(afterB.generation).toBe(2);
      a.proc.kill('SIGCONT');
      h.proc.stdin.write('write\n');
      expect(await h.line()).toMatch(/^error /);
      await new Promise((r) => setTimeout(r, 1000)); // A's renewal meets the new owner's lease
      expect(a.stderr()).toMatch(/machine lease lost|fenced|not served here any more/);
      // Nothing A did after the takeover reached the machine's state.
      expect(await readHead(client, keys)).toMatchObject({ generation: 2, version: afterB.version, seq: afterB.seq });
      const r = await qemuIo(b.uri('vm-split'), ['read -P 0x55 0 64k', 'read -P 0x41 1M 64k'], { readOnly: true, timeoutMs: W_MS + 30_000 });
      mustSucceed(r);
      expect(r.patternFailures).toBe(0);
      // A knows it lost the machine; a new client of A (its old client still connected) gets
      // the machine afresh — B's state — not A's dead device.
      for (let i = 0; i < 50 && !a.stderr().includes('machine lease lost'); i++) await new Promise((res) => setTimeout(res, 100));
      expect(a.stderr()).toContain('machine lease lost');
      const again = await qemuIo(a.uri('vm-split'), ['read -P 0x55 0 64k'], { readOnly: true, timeoutMs: W_MS + 30_000 });
      mustSucceed(again);
      expect(again.patternFailures).toBe(0);
    } finally {
      a.proc.kill('SIGCONT');
      h.proc.kill('SIGKILL');
      await Promise.all([a.stop('SIGKILL'), b.stop()]);
    }
  });

  it('ctl machines and metrics show the machine; ctl release ships it and hands it over at once', async () => {
    const admin = tmp.file('ctl-a.sock');
    const [a, b] = [await serve('ctl-a', ['--admin', `unix:${admin}`]), await serve('ctl-b')];
    const h = holder(a.uri('vm-ctl'), 2);
    const ctl = async (...args: string[]) => mustSucceed(await runTool(process.execPath, [CLI_PATH, 'ctl', '--admin', `unix:${admin}`, ...args]));
    try {
      expect(await h.line()).toBe('ready');
      const view = JSON.parse((await ctl('machines', '--json')).stdout) as { server: string; machines: Array<Record<string, unknown>> };
      expect(view.machines).toHaveLength(1);
      expect(view.machines[0]).toMatchObject({ name: 'vm-ctl', generation: 1, policy: 'on-flush', lagBytes: MiB, previousOwner: null });
      expect(view.machines[0]!.leaseRemainingMs as number).toBeGreaterThan(0);
      const metrics = (await ctl('metrics')).stdout;
      expect(metrics).toMatch(/cownbd_machine_ship_lag_bytes\{machine="vm-ctl",owner="[^"]+"\} 1048576/);
      expect(metrics).toMatch(/cownbd_machine_lease_generation\{machine="vm-ctl",owner="[^"]+"\} 1/);
      expect(JSON.parse((await ctl('release', 'vm-ctl', '--json')).stdout)).toMatchObject({ machine: 'vm-ctl', released: true, generation: 1 });
      // The client on A is refused from now on; B serves the machine at once, unflushed write included.
      h.proc.stdin.write('write\n');
      expect(await h.line()).toMatch(/^error /);
      const started = performance.now();
      const r = await qemuIo(b.uri('vm-ctl'), ['read -P 0x40 0 64k', 'read -P 0x41 1M 64k', 'read -P 0x99 7M 64k'], { readOnly: true });
      mustSucceed(r);
      expect(r.patternFailures).toBe(0);
      expect(b.stderr()).toMatch(/"generation":2,"previousOwner":null,"msg":"machine lease taken"/);
      expect(performance.now() - started).toBeLessThan(W_MS + 10_000);
      const missing = await runTool(process.execPath, [CLI_PATH, 'ctl', '--admin', `unix:${admin}`, 'release', 'vm-other']);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain('machine "vm-other" is not served by this server');
    } finally {
      h.proc.kill('SIGKILL');
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('a takeover that waits longer than --handshake-timeout still completes the client\'s GO', async () => {
    // The idle clock is for clients that stall; waiting for a dead owner's lease is the server's turn.
    const [a, b] = [await serve('hs-a', ['--handshake-timeout', '1']), await serve('hs-b', ['--handshake-timeout', '1'])];
    const h = holder(a.uri('vm-hs'), 1);
    try {
      expect(await h.line()).toBe('ready');
      a.proc.kill('SIGKILL');
      const r = await qemuIo(b.uri('vm-hs'), ['read -P 0x40 0 64k'], { readOnly: true, timeoutMs: W_MS + 30_000 });
      mustSucceed(r);
      expect(r.patternFailures).toBe(0);
      expect(b.stderr()).not.toContain('handshake idle too long');
    } finally {
      h.proc.kill('SIGKILL');
      await b.stop();
    }
  });

  it('interval shipping: a FLUSH is local, and what was written two intervals before a kill -9 is on the next server', async () => {
    const [a, b] = [await serve('iv-a', ['--ship', 'interval=1s']), await serve('iv-b')];
    const h = holder(a.uri('vm-iv'), 3);
    try {
      expect(await h.line()).toBe('ready');
      await new Promise((r) => setTimeout(r, 2_500)); // two intervals: everything written is shipped
      a.proc.kill('SIGKILL');
      const r = await qemuIo(b.uri('vm-iv'), ['read -P 0x40 0 64k', 'read -P 0x41 1M 64k', 'read -P 0x42 2M 64k', 'read -P 0x99 7M 64k'], { readOnly: true, timeoutMs: W_MS + 30_000 });
      mustSucceed(r);
      expect(r.patternFailures).toBe(0);
    } finally {
      h.proc.kill('SIGKILL');
      await b.stop();
    }
  });

  it('a short store outage: the owner keeps serving, an on-flush FLUSH fails with an error rather than lie, then catches up', async () => {
    const [a, b] = [await serve('out-a'), await serve('out-b')];
    const h = holder(a.uri('vm-out'), 1);
    try {
      expect(await h.line()).toBe('ready');
      await s3.stop();
      try {
        h.proc.stdin.write('write\n');
        expect(await h.line()).toMatch(/^error /);
      } finally {
        await s3.start();
      }
      h.proc.stdin.write('write\n');
      expect(await h.line()).toBe('acked');
      h.proc.kill('SIGKILL'); // a client gone without a word: A ships what is left and releases
      const r = await qemuIo(b.uri('vm-out'), ['read -P 0x22 0 64k'], { readOnly: true, timeoutMs: W_MS + 30_000 });
      mustSucceed(r);
      expect(r.patternFailures).toBe(0);
      expect(a.stderr()).toContain('FLUSH not acknowledged, shipping to the object store failed');
    } finally {
      h.proc.kill('SIGKILL');
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('shutdown (SIGTERM) with a client connected ships the unflushed writes and releases the machine', async () => {
    const [a, b] = [await serve('term-a'), await serve('term-b')];
    const h = holder(a.uri('vm-term'), 1);
    try {
      expect(await h.line()).toBe('ready'); // 0x99 at 7 MiB is written, never flushed
      expect(await a.stop('SIGTERM')).toBe(0);
      const r = await qemuIo(b.uri('vm-term'), ['read -P 0x40 0 64k', 'read -P 0x99 7M 64k'], { readOnly: true, timeoutMs: W_MS + 30_000 });
      mustSucceed(r);
      expect(r.patternFailures).toBe(0);
      expect(b.stderr()).toMatch(/"generation":2,"previousOwner":null,"msg":"machine lease taken"/);
    } finally {
      h.proc.kill('SIGKILL');
      await b.stop();
    }
  });
});
