/**
 * The lease of one machine (docs/fleet.md, "The lease protocol"): one server at a time
 * serves a machine; the lease object `PREFIX/NAME/lease.json` says which, and is only ever
 * written with conditional PUTs (conditional-object.ts).
 *
 *   const lease = await MachineLease.take(client, keys, { owner: 'srv-a', ttlMs: 10_000 });
 *   lease.startRenewing(onLost);          // every TTL/3
 *   lease.valid()                          // false once the local validity ran out or it was lost
 *   await lease.release();                 // owner: null; the next taker goes at once
 *
 * Timing uses only this process's monotonic clock (`now`, default performance.now), never a
 * time another server wrote: clocks are not synchronised, only their rates are bounded
 * (`driftRate`). The holder's validity ends TTL·(1−margin) after it *sent* its last
 * successful renewal; a contender takes a held lease only after seeing the same ETag for
 * W = TTL·(1+ρ)/(1−ρ) + margin on its own clock, so the two never overlap (the proof is in
 * docs/fleet.md).
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import type { Logger } from '../logging.js';
import { PreconditionFailedError, type StoreClient } from '../objectstore/store-client.js';
import { readObject, writeObject } from './conditional-object.js';
import type { MachineKeys } from './fleet-keys.js';
import { decodeJson } from './json-object.js';

export const LEASE_FORMAT = 'cownbd-lease';

export interface LeaseRecord {
  readonly machine: string;
  readonly owner: string | null;
  readonly generation: number;
  readonly ttlMs: number;
  readonly renewal: number;
  readonly nonce: string;
}

const schema = z.object({
  format: z.literal(LEASE_FORMAT),
  formatVersion: z.literal(1),
  machine: z.string(),
  owner: z.string().min(1).max(256).nullable(),
  generation: z.number().int().min(1),
  ttlMs: z.number().int().min(1),
  renewal: z.number().int().min(0),
  nonce: z.string(),
});

export function encodeLease(r: LeaseRecord): Buffer {
  return Buffer.from(`${JSON.stringify({ format: LEASE_FORMAT, formatVersion: 1, ...r })}\n`);
}

export function decodeLease(bytes: Buffer, where: string): LeaseRecord {
  const { format: _f, formatVersion: _v, ...r } = decodeJson(bytes, where, 'lease', schema);
  return r;
}

/** The lease is held by another server whose lease has not expired (and we were not asked to wait). */
export class LeaseBusyError extends Error {
  override name = 'LeaseBusyError';
  constructor(
    readonly machine: string,
    readonly holder: string,
    readonly generation: number,
  ) {
    super(`machine ${machine} is served by ${holder} (lease generation ${generation})`);
  }
}

/** This server no longer holds the lease (another took it over): it must not serve writes. */
export class LeaseLostError extends Error {
  override name = 'LeaseLostError';
}

export interface LeaseOptions {
  /** This server's id (stable and unique in the fleet: host and port, say). */
  readonly owner: string;
  readonly ttlMs: number;
  /** Bound on the rate error of any server's monotonic clock (default 0.01). */
  readonly driftRate?: number;
  /** Fraction of the TTL kept as a safety margin on both sides (default 0.1). */
  readonly margin?: number;
  /** Wait for a held lease to expire (default true); false: throw LeaseBusyError. */
  readonly wait?: boolean;
  /** Give up waiting after this long (ms, default: 3 × W). */
  readonly maxWaitMs?: number;
  readonly log?: Logger;
  /** Monotonic milliseconds (tests may pass their own). */
  readonly now?: () => number;
  readonly sleep?: (ms: number) => Promise<void>;
}

const defaultSleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** How long a contender must see one ETag unchanged before it may take the lease. */
export function takeoverWaitMs(ttlMs: number, driftRate = 0.01, margin = 0.1): number {
  return Math.ceil((ttlMs * (1 + driftRate)) / (1 - driftRate) + ttlMs * margin);
}

/** The contender's poll interval while it waits for a held lease (ms). */
export function pollMs(ttlMs: number): number {
  return Math.max(50, Math.min(250, ttlMs / 20));
}

export class MachineLease {
  private lost = false;
  private released = false;
  private timer: NodeJS.Timeout | undefined;
  private renewing: Promise<void> | undefined;

  private constructor(
    private readonly client: StoreClient,
    readonly keys: MachineKeys,
    private readonly o: LeaseOptions,
    private record: LeaseRecord,
    private etag: string,
    /** Monotonic time until which serving is allowed. */
    private validUntil: number,
    /** The holder before us (undefined: the lease was free or absent). */
    readonly previousOwner: string | undefined,
  ) {}

  get generation(): number {
    return this.record.generation;
  }

  get owner(): string {
    return this.o.owner;
  }

  /** Milliseconds of validity left (0 when expired, lost or released). */
  remainingMs(): number {
    if (this.lost || this.released) return 0;
    return Math.max(0, this.validUntil - this.now());
  }

  /** True while this server may serve the machine's writes. */
  valid(): boolean {
    return this.remainingMs() > 0;
  }

  isLost(): boolean {
    return this.lost;
  }

  private now(): number {
    return (this.o.now ?? (() => performance.now()))();
  }

  /**
   * Take the machine's lease: at once when absent or released; when held, after seeing
   * the same ETag for W (takeoverWaitMs) unless `wait` is false (LeaseBusyError).
   */
  static async take(client: StoreClient, keys: MachineKeys, o: LeaseOptions): Promise<MachineLease> {
    const now = o.now ?? (() => performance.now());
    const sleep = o.sleep ?? defaultSleep;
    const margin = o.margin ?? 0.1;
    const w = takeoverWaitMs(o.ttlMs, o.driftRate, margin);
    const giveUpAt = now() + (o.maxWaitMs ?? 3 * w);
    let watched: { etag: string; since: number } | undefined;
    for (;;) {
      const cur = await readObject(client, keys.bucket, keys.lease, decodeLease);
      const seenAt = now(); // after the answer: the ETag existed by then (docs/fleet.md)
      if (cur && cur.value.machine !== keys.machine) throw new Error(`s3://${keys.bucket}/${keys.lease}: lease field machine = "${cur.value.machine}", expected "${keys.machine}"`);
      const free = !cur || cur.value.owner === null;
      if (!free && watched?.etag !== cur.etag) watched = { etag: cur.etag, since: seenAt };
      if (free || now() - watched!.since >= w) {
        const record: LeaseRecord = {
          machine: keys.machine,
          owner: o.owner,
          generation: (cur?.value.generation ?? 0) + 1,
          ttlMs: o.ttlMs,
          renewal: 0,
          nonce: randomBytes(8).toString('hex'),
        };
        const sent = now();
        try {
          const etag = await writeObject(client, keys.bucket, keys.lease, encodeLease(record), cur ? { ifMatch: cur.etag } : { ifNoneMatch: '*' });
          const previous = cur?.value.owner ?? undefined;
          o.log?.info({ machine: keys.machine, generation: record.generation, previousOwner: previous ?? null }, 'machine lease taken');
          return new MachineLease(client, keys, o, record, etag, sent + o.ttlMs * (1 - margin), previous);
        } catch (err) {
          if (!(err instanceof PreconditionFailedError)) throw err;
          watched = undefined; // someone else wrote it: look again
          continue;
        }
      }
      if (o.wait === false) throw new LeaseBusyError(keys.machine, cur!.value.owner!, cur!.value.generation);
      if (now() >= giveUpAt) throw new LeaseBusyError(keys.machine, cur!.value.owner!, cur!.value.generation);
      // Poll (one small GET) often enough to see a release or a renewal soon, but wake at
      // the exact end of W: the takeover then follows W by one GET + one PUT, not by up to a
      // whole poll interval (the PUT's If-Match still refuses it if the holder renewed).
      const untilW = watched!.since + w - now();
      await sleep(Math.max(5, Math.min(pollMs(o.ttlMs), untilW)));
    }
  }

  /**
   * Renew once. A refused condition means another server took the lease: LeaseLostError,
   * and the lease is lost for good. A store error leaves the validity running out.
   */
  async renew(): Promise<void> {
    if (this.lost) throw new LeaseLostError(`machine ${this.keys.machine}: lease lost (generation ${this.record.generation})`);
    if (this.released) throw new Error(`machine ${this.keys.machine}: lease was released`);
    const next: LeaseRecord = { ...this.record, renewal: this.record.renewal + 1, nonce: randomBytes(8).toString('hex') };
    const sent = this.now();
    try {
      this.etag = await writeObject(this.client, this.keys.bucket, this.keys.lease, encodeLease(next), { ifMatch: this.etag });
    } catch (err) {
      if (err instanceof PreconditionFailedError) {
        this.markLost();
        throw new LeaseLostError(`machine ${this.keys.machine}: lease generation ${this.record.generation} was taken over`, { cause: err });
      }
      throw err;
    }
    this.record = next;
    this.validUntil = sent + this.o.ttlMs * (1 - (this.o.margin ?? 0.1));
  }

  /** Renew every TTL/3 until stopped, released or lost; `onLost` is called once when lost. */
  startRenewing(onLost?: (err: Error) => void): void {
    let inFlight = false;
    const tick = (): void => {
      // One renewal at a time: two would race with the same If-Match and the loser would
      // read the winner's object as someone else's — a lease lost to ourselves.
      if (inFlight) return;
      inFlight = true;
      this.renewing = this.renew().finally(() => (inFlight = false)).then(
        () => undefined,
        (err: Error) => {
          if (err instanceof LeaseLostError) {
            this.o.log?.error({ machine: this.keys.machine, generation: this.record.generation }, 'machine lease lost: another server took it over');
            this.stopRenewing();
            onLost?.(err);
          } else {
            this.o.log?.warn({ machine: this.keys.machine, err: err.message, remainingMs: Math.round(this.remainingMs()) }, 'machine lease renewal failed, retrying');
          }
        },
      );
    };
    this.stopRenewing();
    this.timer = setInterval(tick, Math.max(20, Math.floor(this.o.ttlMs / 3)));
    this.timer.unref();
  }

  stopRenewing(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Hand the lease back (owner: null): the next taker goes at once. Ship before calling. */
  async release(): Promise<void> {
    this.stopRenewing();
    await this.renewing;
    if (this.lost || this.released) return;
    const next: LeaseRecord = { ...this.record, owner: null, renewal: this.record.renewal + 1, nonce: randomBytes(8).toString('hex') };
    try {
      this.etag = await writeObject(this.client, this.keys.bucket, this.keys.lease, encodeLease(next), { ifMatch: this.etag });
    } catch (err) {
      if (err instanceof PreconditionFailedError) {
        this.markLost();
        return; // someone took it over already: nothing of ours to release
      }
      throw err;
    }
    this.record = next;
    this.released = true;
    this.o.log?.info({ machine: this.keys.machine, generation: this.record.generation }, 'machine lease released');
  }

  private markLost(): void {
    this.lost = true;
    this.stopRenewing();
  }
}
