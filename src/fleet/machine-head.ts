/**
 * The machine head `PREFIX/NAME/head.json` (docs/fleet.md, "Fencing: the head"): which
 * shipped version is the machine's state. Only conditional PUTs write it, so it is the one
 * place where two servers' views of a machine meet, and the fence:
 *
 *   const head = await MachineHead.claim(client, keys, { generation, owner, base });
 *   head.state.version          // what to serve (null: the base itself)
 *   await head.advance(version) // after a ship; FencedError once a newer generation claimed it
 *
 * claim() rewrites the head (same version) with our lease generation, If-Match the ETag we
 * read: from then on every older owner's advance (If-Match its own last ETag, which is gone)
 * is refused. Acknowledged FLUSHes are therefore in the state the claimer serves, whatever
 * the clocks did. No timing here at all.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { Logger } from '../logging.js';
import { PreconditionFailedError, type StoreClient } from '../objectstore/store-client.js';
import { VERSION_PATTERN } from '../objectstore/uri.js';
import { readObject, writeObject } from './conditional-object.js';
import type { MachineKeys } from './fleet-keys.js';
import { decodeJson } from './json-object.js';

export const HEAD_FORMAT = 'cownbd-machine-head';

export interface HeadRecord {
  readonly machine: string;
  /** Pinned base address the machine started from. */
  readonly base: string;
  /** Current machine version; null: nothing shipped, the machine is its base. */
  readonly version: string | null;
  readonly generation: number;
  readonly owner: string;
  readonly seq: number;
  /** Writer's clock, informative only. */
  readonly shipped: string;
  readonly nonce: string;
}

const schema = z.object({
  format: z.literal(HEAD_FORMAT),
  formatVersion: z.literal(1),
  machine: z.string(),
  base: z.string().startsWith('s3://'),
  version: z.string().regex(VERSION_PATTERN).nullable(),
  generation: z.number().int().min(1),
  owner: z.string(),
  seq: z.number().int().min(0),
  shipped: z.iso.datetime(),
  nonce: z.string(),
});

export function encodeHead(r: HeadRecord): Buffer {
  return Buffer.from(`${JSON.stringify({ format: HEAD_FORMAT, formatVersion: 1, ...r })}\n`);
}

export function decodeHead(bytes: Buffer, where: string): HeadRecord {
  const { format: _f, formatVersion: _v, ...r } = decodeJson(bytes, where, 'machine head', schema);
  return r;
}

/** A newer lease generation owns the machine's head: this server must not publish or serve writes. */
export class FencedError extends Error {
  override name = 'FencedError';
  readonly code = 'EIO';
}

export interface ClaimOptions {
  readonly generation: number;
  readonly owner: string;
  /** Pinned base address, recorded when the machine has no head yet. */
  readonly base: string;
  readonly log?: Logger;
  readonly now?: () => Date;
}

export class MachineHead {
  private fenced = false;

  private constructor(
    private readonly client: StoreClient,
    readonly keys: MachineKeys,
    private readonly o: ClaimOptions,
    private record: HeadRecord,
    private etag: string,
  ) {}

  get state(): HeadRecord {
    return this.record;
  }

  isFenced(): boolean {
    return this.fenced;
  }

  /**
   * Claim the head for lease generation `o.generation`: create it (no head yet) or rewrite it
   * with our generation, retrying while an older owner still advances it. FencedError if a
   * newer generation has it already.
   */
  static async claim(client: StoreClient, keys: MachineKeys, o: ClaimOptions): Promise<MachineHead> {
    for (;;) {
      const cur = await readObject(client, keys.bucket, keys.head, decodeHead);
      if (cur && cur.value.machine !== keys.machine) throw new Error(`s3://${keys.bucket}/${keys.head}: machine head field machine = "${cur.value.machine}", expected "${keys.machine}"`);
      if (cur && cur.value.generation > o.generation) {
        throw new FencedError(`machine ${keys.machine}: head belongs to lease generation ${cur.value.generation}, newer than ours (${o.generation})`);
      }
      const record: HeadRecord = {
        machine: keys.machine,
        base: cur?.value.base ?? o.base,
        version: cur?.value.version ?? null,
        generation: o.generation,
        owner: o.owner,
        seq: cur?.value.seq ?? 0,
        shipped: cur?.value.shipped ?? (o.now ?? (() => new Date()))().toISOString(),
        nonce: randomBytes(8).toString('hex'),
      };
      try {
        const etag = await writeObject(client, keys.bucket, keys.head, encodeHead(record), cur ? { ifMatch: cur.etag } : { ifNoneMatch: '*' });
        o.log?.info({ machine: keys.machine, generation: o.generation, version: record.version }, 'machine head claimed');
        return new MachineHead(client, keys, o, record, etag);
      } catch (err) {
        if (!(err instanceof PreconditionFailedError)) throw err;
        // The previous owner advanced it meanwhile (its last ship): read it again.
      }
    }
  }

  /**
   * Make `version` (a manifest already stored under the machine's prefix) the machine's
   * state. FencedError when another generation claimed the head since: permanent.
   */
  async advance(version: string): Promise<HeadRecord> {
    if (this.fenced) throw new FencedError(`machine ${this.keys.machine}: fenced (lease generation ${this.record.generation} was taken over)`);
    const next: HeadRecord = {
      ...this.record,
      version,
      seq: this.record.seq + 1,
      shipped: (this.o.now ?? (() => new Date()))().toISOString(),
      nonce: randomBytes(8).toString('hex'),
    };
    try {
      this.etag = await writeObject(this.client, this.keys.bucket, this.keys.head, encodeHead(next), { ifMatch: this.etag });
    } catch (err) {
      if (err instanceof PreconditionFailedError) {
        this.fenced = true;
        this.o.log?.error({ machine: this.keys.machine, generation: this.record.generation }, 'machine head taken by a newer lease generation: fenced, nothing more is published');
        throw new FencedError(`machine ${this.keys.machine}: head advanced by another server (lease generation ${this.record.generation} is fenced)`, { cause: err });
      }
      throw err;
    }
    this.record = next;
    return next;
  }
}

/** The machine's head as stored, without claiming it (ctl machines, tests). */
export async function readHead(client: StoreClient, keys: MachineKeys): Promise<HeadRecord | undefined> {
  return (await readObject(client, keys.bucket, keys.head, decodeHead))?.value;
}
