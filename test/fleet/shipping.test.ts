/**
 * Shipping a machine (docs/fleet.md, "Shipping", "Fencing"), in-process over the real
 * test S3 server and a real cow overlay over a published s3:// base: a FLUSH under on-flush
 * returns only after the written chunks, a complete manifest and the head are in the store;
 * the shipped version opened as an ordinary s3:// image (what a takeover serves) reads back
 * base + writes; unchanged chunks are never uploaded; a store outage fails the FLUSH with
 * EIO and nothing is lost when it returns; a fenced server's FLUSH fails and it serves
 * nothing more; interval shipping and close() ship without a FLUSH.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../src/block/block-device.js';
import { machineKeys } from '../../src/fleet/fleet-keys.js';
import { MachineLease } from '../../src/fleet/lease.js';
import { MachineDevice, parseShipPolicy, type ShipPolicy } from '../../src/fleet/machine-device.js';
import { MachineHead, readHead } from '../../src/fleet/machine-head.js';
import { Shipper } from '../../src/fleet/shipper.js';
import { createImage, openImage } from '../../src/formats/open-image.js';
import { silentLogger } from '../../src/logging.js';
import { decodeManifest } from '../../src/objectstore/manifest.js';
import { createObjectStoreContext, openObjectStoreBase, type ObjectStoreContext } from '../../src/objectstore/open.js';
import { formatObjectStoreUri } from '../../src/objectstore/uri.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { MiB, publish } from '../objectstore/s3-helpers.js';
import { testClient } from './fleet-store.js';

const STORE = { bucket: 'golden', prefix: 'fleet' };
const SIZE = 8 * MiB;

describe('shipping a machine to the object store', () => {
  let s3: S3TestServer;
  let tmp: TempDir;
  let ctx: ObjectStoreContext;
  let base: string;
  let baseBytes: Buffer;
  let n = 0;

  beforeAll(async () => {
    s3 = await startS3Server();
    tmp = makeTempDir('cownbd-fleet-ship-');
    const img = createRawImage(tmp.file('base.raw'), SIZE, [[0, SIZE]], 22);
    baseBytes = readFileSync(img);
    base = (await publish(s3, img, 's3://golden/base')).uri;
    ctx = await createObjectStoreContext({ store: testClient(s3.endpoint).config, cacheDir: tmp.file('cache'), cacheSize: 1 << 30, log: silentLogger() });
  });
  afterAll(async () => {
    await ctx?.close();
    await s3?.close();
    tmp?.cleanup();
  });

  /** A machine as a server would set it up: lease, head, overlay over the base, shipper, device. */
  async function machine(policy: ShipPolicy, name = `vm${++n}`, wrap: (d: BlockDevice) => BlockDevice = (d) => d) {
    const keys = machineKeys(STORE, name);
    const lease = await MachineLease.take(ctx.client, keys, { owner: 'srv-a', ttlMs: 60_000 });
    const head = await MachineHead.claim(ctx.client, keys, { generation: lease.generation, owner: 'srv-a', base });
    const file = tmp.file(`${name}.cow`);
    await createImage('cow', file, { backing: base, backingFormat: 'raw', objectStore: async () => ctx });
    const overlay = await openImage(file, { format: 'cow', objectStore: async () => ctx });
    const { manifest: start } = await ctx.manifests.resolve(base);
    const shipper = new Shipper({ client: ctx.client, keys, head, device: overlay, start });
    const problem = (): string | undefined => (head.isFenced() ? 'fenced' : lease.valid() ? undefined : 'lease expired');
    const dev = new MachineDevice({ machine: name, inner: wrap(overlay), shipper, policy, servingProblem: problem });
    return { keys, lease, head, shipper, dev };
  }

  async function readAll(dev: BlockDevice): Promise<Buffer> {
    const out = Buffer.alloc(dev.size);
    await dev.read(0, out);
    return out;
  }

  async function shippedImage(keys: ReturnType<typeof machineKeys>): Promise<Buffer> {
    const h = (await readHead(ctx.client, keys))!;
    const dev = await openObjectStoreBase(formatObjectStoreUri({ ...keys.image, version: h.version! }), ctx);
    try {
      return await readAll(dev);
    } finally {
      await dev.close();
    }
  }

  it('parses the --ship policy and names a bad value', () => {
    expect(parseShipPolicy('on-flush')).toEqual({ kind: 'on-flush' });
    expect(parseShipPolicy('interval=10s')).toEqual({ kind: 'interval', ms: 10_000 });
    expect(parseShipPolicy('interval=250ms')).toEqual({ kind: 'interval', ms: 250 });
    expect(() => parseShipPolicy('interval=5')).toThrow('--ship "interval=5": expected on-flush or interval=DURATION');
    expect(() => parseShipPolicy('sometimes')).toThrow('--ship "sometimes"');
  });

  it('on-flush: FLUSH returns after chunks, manifest and head are stored; only written chunks are uploaded', async () => {
    const m = await machine({ kind: 'on-flush' });
    const data = Buffer.alloc(64 * 1024, 0x5a);
    const at = MiB + MiB / 2 - 1024; // inside chunk 1
    await m.dev.write(at, data);
    expect(m.shipper.lag().bytes).toBe(MiB);
    const putsBefore = s3.stats.puts;
    await m.dev.flush();
    expect(m.shipper.lag()).toEqual({ bytes: 0, seconds: 0 });
    expect(s3.stats.puts - putsBefore).toBe(3); // one chunk, one manifest, the head
    const h = (await readHead(ctx.client, m.keys))!;
    expect(h).toMatchObject({ machine: m.keys.machine, base, generation: 1, seq: 1 });
    const manifest = decodeManifest(await ctx.client.get('golden', m.keys.manifest(h.version!)), 'manifest');
    const baseManifest = (await ctx.manifests.resolve(base)).manifest;
    const expected = Buffer.from(baseBytes);
    data.copy(expected, at);
    expect(manifest.chunks.filter((c, i) => c !== baseManifest.chunks[i])).toEqual([createHash('sha256').update(expected.subarray(MiB, 2 * MiB)).digest('hex')]);
    expect((await shippedImage(m.keys)).equals(expected)).toBe(true);
    // A FUA write ships too; a FLUSH with nothing new writes nothing.
    await m.dev.write(7 * MiB, data, { fua: true });
    data.copy(expected, 7 * MiB);
    expect((await readHead(ctx.client, m.keys))!.seq).toBe(2);
    expect((await shippedImage(m.keys)).equals(expected)).toBe(true);
    const putsIdle = s3.stats.puts;
    await m.dev.flush();
    expect(s3.stats.puts).toBe(putsIdle);
    await m.dev.close();
  });

  it('a store outage fails the FLUSH with EIO; nothing is lost when the store returns', async () => {
    const m = await machine({ kind: 'on-flush' });
    const expected = Buffer.from(baseBytes);
    const data = Buffer.alloc(4096, 0xc3);
    await m.dev.write(3 * MiB, data);
    data.copy(expected, 3 * MiB);
    await s3.stop();
    try {
      await expect(m.dev.flush()).rejects.toMatchObject({ code: 'EIO', message: expect.stringContaining('FLUSH not acknowledged, shipping to the object store failed') });
    } finally {
      await s3.start();
    }
    expect(m.shipper.lag().bytes).toBe(MiB); // still to be shipped
    await m.dev.flush();
    expect((await shippedImage(m.keys)).equals(expected)).toBe(true);
    await m.dev.close();
  }, 60_000);

  it('fenced by a newer generation: the FLUSH fails, the head keeps the new owner\'s state, nothing more is served', async () => {
    const m = await machine({ kind: 'on-flush' });
    await m.dev.write(0, Buffer.alloc(4096, 1));
    await m.dev.flush();
    const shipped = (await readHead(ctx.client, m.keys))!;
    // Another server takes the machine over (here: claims the head with generation 2).
    await MachineHead.claim(ctx.client, m.keys, { generation: 2, owner: 'srv-b', base });
    await m.dev.write(0, Buffer.alloc(4096, 2));
    await expect(m.dev.flush()).rejects.toMatchObject({ code: 'EIO', message: expect.stringContaining('lease generation 1 is fenced') });
    await expect(m.dev.read(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EIO', message: expect.stringContaining('not served here any more (fenced)') });
    await expect(m.dev.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EIO' });
    expect(await readHead(ctx.client, m.keys)).toMatchObject({ version: shipped.version, generation: 2, owner: 'srv-b' });
    await m.dev.close(); // does not ship: not ours any more
    expect(await readHead(ctx.client, m.keys)).toMatchObject({ version: shipped.version, generation: 2 });
  });

  it('interval: ships without a FLUSH within the interval; close() ships the rest', async () => {
    const m = await machine({ kind: 'interval', ms: 300 });
    const expected = Buffer.from(baseBytes);
    const a = Buffer.alloc(8192, 0x77);
    await m.dev.write(5 * MiB, a);
    a.copy(expected, 5 * MiB);
    await m.dev.flush(); // local only under interval
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && (await readHead(ctx.client, m.keys))?.version == null) await new Promise((r) => setTimeout(r, 100));
    expect((await shippedImage(m.keys)).equals(expected)).toBe(true);
    const b = Buffer.alloc(8192, 0x78);
    await m.dev.write(6 * MiB, b);
    b.copy(expected, 6 * MiB);
    await m.dev.close();
    expect((await shippedImage(m.keys)).equals(expected)).toBe(true);
  });

  it('a write still in flight when a ship starts goes out with the next ship (it is marked once it landed)', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    // The overlay's write at 4 MiB lands only when the gate opens (a slow disk).
    const slow = (d: BlockDevice): BlockDevice =>
      new Proxy(d, {
        get(target, prop) {
          if (prop === 'write') return async (offset: number, data: Buffer) => (offset === 4 * MiB && (await gate), target.write(offset, data));
          const v = Reflect.get(target, prop) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
    const m = await machine({ kind: 'interval', ms: 3_600_000 }, undefined, slow);
    const expected = Buffer.from(baseBytes);
    const a = Buffer.alloc(4096, 0xa1);
    const b = Buffer.alloc(4096, 0xb2);
    await m.dev.write(2 * MiB, a);
    a.copy(expected, 2 * MiB);
    const inFlight = m.dev.write(4 * MiB, b);
    await m.shipper.ship(); // runs while the write at 4 MiB has not landed
    open();
    await inFlight;
    b.copy(expected, 4 * MiB);
    await m.shipper.ship();
    expect((await shippedImage(m.keys)).equals(expected)).toBe(true);
    await m.dev.close();
  });
});
