/**
 * `serve --base s3://… --overlay-dir DIR --overlay-store s3://BUCKET/PREFIX`: every export
 * NAME is a fleet machine (docs/fleet.md) whose state lives in the object store, not on
 * this server. Opening NAME (its first connection):
 *
 *   take its lease (free: at once; held by another server: after W, lease.ts)
 *   claim its head (fences every older owner, machine-head.ts)
 *   DIR/NAME.cow := a FRESH local cow overlay over the head's version
 *                   (s3://BUCKET/PREFIX/NAME@VERSION, read on demand through the chunk
 *                   cache), or over the machine's base when nothing was shipped yet
 *   serve it through MachineDevice: serving guard, dirty marks, --ship policy
 *
 * The local overlay is only a working copy: whatever it held before (an earlier ownership,
 * a crash) is discarded, because another server may have shipped newer state since. When
 * the last connection ends, the machine is shipped and its lease released, so any server
 * can take it at once. Connections to one NAME share one device, as with --overlay-dir.
 *
 * Not here yet (docs/fleet.md "Not built yet"): --max-overlays/--min-free, live snapshots
 * and the admin API's overlay operations for fleet machines.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import { FileIo } from '../block/file-io.js';
import { machineKeys } from '../fleet/fleet-keys.js';
import { MachineLease } from '../fleet/lease.js';
import { MachineDevice, type ShipPolicy } from '../fleet/machine-device.js';
import { MachineHead } from '../fleet/machine-head.js';
import { Shipper } from '../fleet/shipper.js';
import type { ExportGeometry } from '../formats/format-record.js';
import { createImage, openImage } from '../formats/open-image.js';
import { DEFAULT_OVERLAY_FORMAT } from '../formats/registry.js';
import type { Logger } from '../logging.js';
import type { ObjectStoreContext } from '../objectstore/open.js';
import { formatObjectStoreUri, isObjectStoreUri, type ObjectStoreUri } from '../objectstore/uri.js';
import { releaseOnce, type ExportContext, type ExportHandle, type ExportInfo, type ExportProvider, type ExportSummary } from './exports.js';
import { overlayNameProblem, type BaseImage } from './overlay-providers.js';

export interface FleetOptions {
  readonly store: ObjectStoreUri;
  readonly policy: ShipPolicy;
  readonly leaseTtlMs: number;
  /** This server's id in lease and head objects (default: host/pid/random). */
  readonly serverId?: string;
}

interface Attached {
  readonly device: MachineDevice;
  readonly lease: MachineLease;
  readonly shipper: Shipper;
  readonly head: MachineHead;
  readonly attachedAt: Date;
}

/** One machine this server serves, for `ctl machines`, the metrics and the status page. */
export interface MachineView {
  readonly name: string;
  readonly owner: string;
  readonly generation: number;
  /** Milliseconds of lease validity left on this server's clock. */
  readonly leaseRemainingMs: number;
  /** The server that held the machine before this one took it (undefined: it was free). */
  readonly previousOwner: string | null;
  readonly attachedAt: string;
  readonly version: string | null;
  readonly lastShip: string | null;
  readonly lagBytes: number;
  readonly lagSeconds: number;
  readonly ships: number;
  readonly failedShips: number;
  readonly policy: string;
}

interface Machine {
  opening: Promise<Attached>;
  refs: number;
  closing?: Promise<void>;
}

export class FleetProvider implements ExportProvider {
  private readonly machines = new Map<string, Machine>();
  private closed = false;
  readonly serverId: string;

  private constructor(
    private readonly base: BaseImage,
    private readonly dir: string,
    private readonly o: FleetOptions,
    private readonly ctx: ObjectStoreContext,
    private readonly geometry: ExportGeometry,
    private readonly log: Logger,
  ) {
    this.serverId = o.serverId ?? `${os.hostname()}/${process.pid}/${randomBytes(3).toString('hex')}`;
  }

  static async create(base: BaseImage, dir: string, o: FleetOptions, log: Logger): Promise<FleetProvider> {
    if (!isObjectStoreUri(base.path) || !base.objectStore) throw new Error(`--overlay-store needs an s3:// --base (machines ship into the chunk store their base is in); got ${base.path}`);
    await mkdir(dir, { recursive: true });
    const ctx = await base.objectStore();
    const io = base.io ?? new FileIo();
    const dev = await openImage(base.path, { readOnly: true, objectStore: base.objectStore });
    let geometry: ExportGeometry;
    try {
      const g = DEFAULT_OVERLAY_FORMAT.overlayGeometry!(dev, io, true);
      geometry = { ...g, capabilities: { ...g.capabilities, fua: true } };
    } finally {
      await dev.close();
    }
    return new FleetProvider(base, path.resolve(dir), o, ctx, geometry, log);
  }

  async list(): Promise<ExportSummary[]> {
    return [...this.machines.keys()].sort().map((name) => ({ name, description: this.description(name) }));
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    return overlayNameProblem(name) ? undefined : this.info(name);
  }

  refusalReason(name: string): string | undefined {
    return overlayNameProblem(name);
  }

  async open(name: string, _ctx: ExportContext): Promise<ExportHandle | undefined> {
    if (overlayNameProblem(name)) return undefined;
    if (this.closed) throw Object.assign(new Error('server is shutting down'), { code: 'ESHUTDOWN' });
    let m = this.machines.get(name);
    if (m?.closing) {
      await m.closing;
      m = this.machines.get(name);
    }
    if (!m) {
      const entry: Machine = { opening: this.attach(name), refs: 0 };
      this.machines.set(name, entry);
      entry.opening.catch(() => this.machines.get(name) === entry && this.machines.delete(name));
      m = entry;
    }
    m.refs++;
    let device: BlockDevice;
    try {
      device = (await m.opening).device;
    } catch (err) {
      m.refs--;
      throw err;
    }
    const entry = m;
    return releaseOnce({ ...this.info(name), size: device.size, device }, () => this.releaseOne(name, entry));
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.machines.entries()].map(([name, m]) => ((m.refs = 0), this.detach(name, m))));
  }

  /** The machines attached here (leases held by this server). */
  async machinesView(): Promise<MachineView[]> {
    const out: MachineView[] = [];
    for (const [name, m] of [...this.machines.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const a = await m.opening.catch(() => undefined);
      if (!a) continue;
      const lag = a.shipper.lag();
      out.push({
        name,
        owner: this.serverId,
        generation: a.lease.generation,
        leaseRemainingMs: Math.round(a.lease.remainingMs()),
        previousOwner: a.lease.previousOwner ?? null,
        attachedAt: a.attachedAt.toISOString(),
        version: a.head.state.version,
        lastShip: a.shipper.lastShipAt?.toISOString() ?? null,
        lagBytes: lag.bytes,
        lagSeconds: Math.round(lag.seconds * 1000) / 1000,
        ships: a.shipper.stats.ships,
        failedShips: a.shipper.stats.failedShips,
        policy: this.o.policy.kind,
      });
    }
    return out;
  }

  /**
   * `ctl release NAME`: ship, refuse further requests for it here, hand the lease back, so
   * another server takes it at once. Undefined when this server does not serve NAME.
   */
  async release(name: string): Promise<{ version: string | null; generation: number } | undefined> {
    const m = this.machines.get(name);
    if (!m || m.closing) return undefined;
    const a = await m.opening.catch(() => undefined);
    if (!a) return undefined;
    await a.device.retire('released by ctl release: reconnect to be served by another server');
    // A new connection to NAME here takes the machine afresh; the old handles keep their entry.
    if (this.machines.get(name) === m) this.machines.delete(name);
    await a.lease.release();
    this.log.info({ export: name, version: a.head.state.version }, 'fleet machine released on request');
    return { version: a.head.state.version, generation: a.lease.generation };
  }

  private info(name: string): ExportInfo {
    return { name, description: this.description(name), ...this.geometry };
  }

  private description(name: string): string {
    return `fleet machine ${name} in ${formatObjectStoreUri(this.o.store)}`;
  }

  /** Lease, head, fresh local overlay over the shipped state, shipper, device. */
  private async attach(name: string): Promise<Attached> {
    const keys = machineKeys(this.o.store, name);
    const client = this.ctx.client;
    const lease = await MachineLease.take(client, keys, { owner: this.serverId, ttlMs: this.o.leaseTtlMs, log: this.log });
    try {
      const head = await MachineHead.claim(client, keys, { generation: lease.generation, owner: this.serverId, base: this.base.path, log: this.log });
      const backing = head.state.version === null ? head.state.base : formatObjectStoreUri({ ...keys.image, version: head.state.version });
      const overlay = await this.freshOverlay(name, backing);
      const { manifest: start } = await this.ctx.manifests.resolve(backing);
      const shipper = new Shipper({ client, keys, head, device: overlay, start, log: this.log });
      const servingProblem = (): string | undefined =>
        head.isFenced() ? 'fenced: another server published for it' : lease.isLost() ? 'its lease was taken over' : lease.valid() ? undefined : 'lease not renewed in time (object store unreachable?)';
      const device = new MachineDevice({ machine: name, inner: overlay, shipper, policy: this.o.policy, servingProblem, log: this.log });
      // Lost (taken over): new connections to NAME here must attach afresh, not share this dead device.
      lease.startRenewing(() => this.forget(name, device));
      this.log.info({ export: name, generation: lease.generation, previousOwner: lease.previousOwner ?? null, backing, policy: this.o.policy.kind }, 'fleet machine attached');
      return { device, lease, shipper, head, attachedAt: new Date() };
    } catch (err) {
      await lease.release().catch(() => {});
      throw err;
    }
  }

  /** Drop NAME's entry if it still holds `device` (its handles keep their own entry). */
  private forget(name: string, device: MachineDevice): void {
    const m = this.machines.get(name);
    if (m) void m.opening.then((a) => a.device === device && this.machines.get(name) === m && this.machines.delete(name), () => {});
  }

  private async freshOverlay(name: string, backing: string): Promise<BlockDevice> {
    const file = path.join(this.dir, `${name}.cow`);
    await rm(file, { force: true });
    const objectStore = this.base.objectStore;
    await createImage(DEFAULT_OVERLAY_FORMAT.name, file, { backing, backingFormat: 'raw', io: this.base.io, objectStore });
    return openImage(file, { format: DEFAULT_OVERLAY_FORMAT.name, io: this.base.io, objectStore });
  }

  /** A connection ended; its handle names its own entry (a released machine's entry left the map). */
  private async releaseOne(name: string, m: Machine): Promise<void> {
    m.refs--;
    if (m.refs <= 0) await this.detach(name, m);
  }

  /** Last user gone: ship (MachineDevice.close), then hand the lease back. */
  private async detach(name: string, m: Machine): Promise<void> {
    m.closing ??= (async () => {
      try {
        const { device, lease } = await m.opening;
        try {
          await device.close();
          await lease.release();
          this.log.info({ export: name }, 'fleet machine shipped and released');
        } catch (err) {
          // Not shipped (store unreachable): the lease is left to run out, after which another
          // server serves the last shipped state; the writes since were never acknowledged by
          // a FLUSH under on-flush (under interval they are the stated loss).
          lease.stopRenewing();
          this.log.error({ export: name, err: (err as Error).message }, 'fleet machine not shipped at release; its lease runs out instead');
        }
      } catch {
        // attach failed: nothing to release
      } finally {
        if (this.machines.get(name) === m) this.machines.delete(name);
      }
    })();
    await m.closing;
  }
}

