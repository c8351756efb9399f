/**
 * The machine lease and the fenced head (docs/fleet.md) against the real test S3 server
 * (s3rver with conditional PUTs): one holder at a time, release hands over at once, a
 * renewing holder is never taken over, a contender waits W on its own clock, and a holder
 * paused past its TTL (SIGSTOP of a real second process) is taken over and, resumed,
 * neither serves (valid() false) nor publishes (its head advance is fenced).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { machineKeys } from '../../src/fleet/fleet-keys.js';
import { decodeLease, LeaseBusyError, LeaseLostError, MachineLease, pollMs, takeoverWaitMs } from '../../src/fleet/lease.js';
import { FencedError, MachineHead, readHead } from '../../src/fleet/machine-head.js';
import type { StoreClient } from '../../src/objectstore/store-client.js';
import { startFaultS3Server } from '../helpers/fault-s3-server.js';
import { S3_ENV, startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { testClient } from './fleet-store.js';

const STORE = { bucket: 'golden', prefix: 'fleet' };
const BASE = 's3://golden/base@20261207T000000Z-00000000';
const V1 = '20261207T010000.000Z-00000001';
const V2 = '20261207T010000.000Z-00000002';

describe('machine lease and head over the test S3 server', () => {
  let s3: S3TestServer;
  let client: StoreClient;
  beforeAll(async () => {
    s3 = await startS3Server();
    client = testClient(s3.endpoint);
  });
  afterAll(async () => {
    client?.close();
    await s3?.close();
  });

  it('W follows the drift bound: TTL·(1+ρ)/(1−ρ) + margin', () => {
    expect(takeoverWaitMs(10_000, 0.01, 0.1)).toBe(11_203);
    expect(takeoverWaitMs(10_000, 0, 0)).toBe(10_000);
  });

  it('one holder at a time; release hands the lease over at once with the next generation', async () => {
    const keys = machineKeys(STORE, 'vm-release');
    const a = await MachineLease.take(client, keys, { owner: 'srv-a', ttlMs: 60_000 });
    expect(a.generation).toBe(1);
    expect(a.valid()).toBe(true);
    expect(a.previousOwner).toBeUndefined();
    const busy = MachineLease.take(client, keys, { owner: 'srv-b', ttlMs: 60_000, wait: false });
    await expect(busy).rejects.toThrow(LeaseBusyError);
    await expect(busy).rejects.toThrow('machine vm-release is served by srv-a (lease generation 1)');
    await a.release();
    expect(a.valid()).toBe(false);
    const started = performance.now();
    const b = await MachineLease.take(client, keys, { owner: 'srv-b', ttlMs: 60_000, wait: false });
    expect(performance.now() - started).toBeLessThan(5_000); // no TTL wait after a release
    expect(b.generation).toBe(2);
    const stored = decodeLease((await client.get(STORE.bucket, keys.lease)), 'lease');
    expect(stored).toMatchObject({ machine: 'vm-release', owner: 'srv-b', generation: 2 });
  });

  it('a renewing holder is never taken over; a contender counts W on its own clock from the last change it saw', async () => {
    const keys = machineKeys(STORE, 'vm-renew');
    const ttlMs = 2000;
    const a = await MachineLease.take(client, keys, { owner: 'srv-a', ttlMs });
    a.startRenewing();
    const w = takeoverWaitMs(ttlMs);
    await expect(MachineLease.take(client, keys, { owner: 'srv-b', ttlMs, maxWaitMs: 3 * w })).rejects.toThrow(LeaseBusyError);
    expect(a.valid()).toBe(true);
    // The holder stops renewing (a crash): the contender takes it after W of seeing one ETag.
    a.stopRenewing();
    const started = performance.now();
    const b = await MachineLease.take(client, keys, { owner: 'srv-b', ttlMs });
    const waited = performance.now() - started;
    expect(waited).toBeGreaterThanOrEqual(w - 5);
    expect(waited).toBeLessThan(w + 3_000);
    expect(b.generation).toBe(a.generation + 1);
    expect(b.previousOwner).toBe('srv-a');
    // The old holder's validity has run out on its own clock, and its renewal is refused.
    expect(a.valid()).toBe(false);
    await expect(a.renew()).rejects.toThrow(LeaseLostError);
    expect(a.isLost()).toBe(true);
  });

  it('a contender with a fake clock takes over exactly when W has passed on it', async () => {
    const keys = machineKeys(STORE, 'vm-clock');
    await MachineLease.take(client, keys, { owner: 'srv-a', ttlMs: 10_000 });
    let t = 0;
    const sleeps: number[] = [];
    const b = await MachineLease.take(client, keys, {
      owner: 'srv-b',
      ttlMs: 10_000,
      now: () => t,
      sleep: async (ms) => {
        sleeps.push(ms);
        t += ms;
      },
    });
    expect(b.generation).toBe(2);
    // Polls every pollMs (a release is seen soon), and the last sleep ends exactly at W: no
    // takeover is later than W by a part of a poll interval.
    expect(t).toBe(takeoverWaitMs(10_000));
    expect(sleeps.slice(0, -1).every((ms) => ms === pollMs(10_000))).toBe(true);
    expect(sleeps.at(-1)).toBeLessThanOrEqual(pollMs(10_000));
  });

  it('head: claim by a newer generation fences every older writer; a stale claim is refused', async () => {
    const keys = machineKeys(STORE, 'vm-head');
    const h1 = await MachineHead.claim(client, keys, { generation: 1, owner: 'srv-a', base: BASE });
    expect(h1.state).toMatchObject({ version: null, base: BASE, generation: 1, seq: 0 });
    await h1.advance(V1);
    const h2 = await MachineHead.claim(client, keys, { generation: 2, owner: 'srv-b', base: 's3://golden/other@20261207T000000Z-00000009' });
    expect(h2.state).toMatchObject({ version: V1, base: BASE, generation: 2, seq: 1 }); // the machine's base is kept
    await expect(h1.advance(V2)).rejects.toThrow(FencedError);
    expect(h1.isFenced()).toBe(true);
    await expect(h1.advance(V2)).rejects.toThrow(/fenced/);
    expect(await readHead(client, keys)).toMatchObject({ version: V1, generation: 2, owner: 'srv-b' });
    await h2.advance(V2);
    expect(await readHead(client, keys)).toMatchObject({ version: V2, generation: 2, seq: 2 });
    await expect(MachineHead.claim(client, keys, { generation: 1, owner: 'srv-a', base: BASE })).rejects.toThrow(/newer than ours/);
  });

  it('a holder paused (SIGSTOP) past its TTL is taken over; resumed, it serves nothing and publishes nothing', async () => {
    const ttlMs = 1500;
    const keys = machineKeys(STORE, 'vm-paused');
    const child = spawn(process.execPath, [fileURLToPath(new URL('lease-holder.mjs', import.meta.url)), s3.endpoint, 'vm-paused', String(ttlMs)], {
      env: { ...process.env, ...S3_ENV },
    }) as ChildProcessWithoutNullStreams;
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const next = async (): Promise<Record<string, unknown>> => {
      const r = await lines.next();
      if (r.done) throw new Error(`lease holder exited: ${stderr}`);
      return JSON.parse(r.value) as Record<string, unknown>;
    };
    const ask = async (cmd: string): Promise<Record<string, unknown>> => {
      child.stdin.write(`${cmd}\n`);
      return next();
    };
    try {
      expect(await next()).toEqual({ held: true, generation: 1 });
      expect(await ask(`advance ${V1}`)).toEqual({ advanced: V1 });
      expect(await ask('status')).toEqual({ valid: true, lost: false, fenced: false });
      child.kill('SIGSTOP');
      const started = performance.now();
      const lease = await MachineLease.take(client, keys, { owner: 'srv-new', ttlMs });
      const tookMs = performance.now() - started;
      expect(lease.generation).toBe(2);
      expect(lease.previousOwner).toBe('paused-holder');
      expect(tookMs).toBeLessThan(takeoverWaitMs(ttlMs) + 3_000);
      const head = await MachineHead.claim(client, keys, { generation: lease.generation, owner: 'srv-new', base: BASE });
      expect(head.state.version).toBe(V1); // everything the old holder published is there
      child.kill('SIGCONT');
      // Resumed: its validity ran out on its own monotonic clock (and its renewal is refused).
      expect(await ask('status')).toMatchObject({ valid: false });
      expect(await ask(`advance ${V2}`)).toMatchObject({ error: 'FencedError' });
      expect(await ask('status')).toEqual({ valid: false, lost: true, fenced: true });
      expect(await readHead(client, keys)).toMatchObject({ version: V1, generation: 2, owner: 'srv-new' });
      expect(decodeLease(await client.get(STORE.bucket, keys.lease), 'lease')).toMatchObject({ owner: 'srv-new', generation: 2 });
    } finally {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
  });
});

describe('lease renewal on a slow store', () => {
  it('a renewal slower than TTL/3 never overlaps the next one (which would lose the lease to ourselves)', async () => {
    const s3 = await startFaultS3Server();
    const client = testClient(s3.endpoint);
    try {
      const keys = machineKeys(STORE, 'vm-slow');
      const ttlMs = 1500;
      const lease = await MachineLease.take(client, keys, { owner: 'srv-a', ttlMs });
      // Each renewal takes 700 ms at the store: longer than the 500 ms renewal period.
      s3.inject({ key: keys.lease, method: 'PUT', fault: { kind: 'delay', ms: 700 }, times: Infinity });
      lease.startRenewing();
      await new Promise((r) => setTimeout(r, 3_500));
      lease.stopRenewing();
      expect(lease.isLost()).toBe(false);
      expect(s3.requests.filter((r) => r.method === 'PUT' && r.key === keys.lease && r.fault === 'delay').length).toBeGreaterThanOrEqual(3);
      await expect(lease.renew()).resolves.toBeUndefined();
    } finally {
      client.close();
      await s3.close();
    }
  });
});
