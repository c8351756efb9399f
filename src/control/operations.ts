/**
 * What the admin API can see and do, independent of HTTP (the API maps ApiError to a
 * status code; everything else is a 500 that never stops the server).
 *
 *   exports()      every export the server offers: kind, chain with bytes per layer,
 *                  connections
 *   connections()  every client in transmission: export, peer, since, bytes, in flight
 *   reset(name)    throw the top overlay away (a pristine disk over its backing)
 *   remove(name)   delete a per-machine overlay (--overlay-dir) with all its layers
 *
 * reset/remove refuse (409) while clients are connected unless `force`, which
 * disconnects them first (their running requests finish, then the sockets close). New
 * clients are held off (GuardedProvider) for the whole operation.
 *
 * Allocation figures (bytes per layer, the status page's map) come from ExportFigures:
 * measured in the background, never per request, so polling cannot stall the data path
 * (export-figures.ts).
 */
import { unlink } from 'node:fs/promises';
import type { BlockDevice } from '../block/block-device.js';
import type { Logger } from '../logging.js';
import type { Connection } from '../server/connection.js';
import type { NbdServer } from '../server/listener.js';
import { overlayNameProblem } from '../server/overlay-providers.js';
import type { Allocation } from './allocation.js';
import { ExportFigures } from './export-figures.js';
import type { ReloadableExports } from './export-set.js';
import type { GuardedProvider } from './guarded-provider.js';
import { recreateCowOver, readCowBacking, snapshotLayerFiles } from '../formats/cow/cow-layers.js';
import { alignUp } from '../block/block-split.js';
import type { FileIo } from '../block/file-io.js';
import { liveSnapshot, offlineSnapshot, type SnapshotResult } from './snapshot.js';
import { SwappableDevice } from './swappable-device.js';
import { ApiError } from './api-error.js';

export { ApiError } from './api-error.js';

export type ExportKind = 'static' | 'overlay' | 'ephemeral';

export interface LayerView {
  readonly depth: number;
  readonly format: string;
  readonly path?: string;
  /** Bytes of the disk whose data this layer provides (qemu:allocation-depth). */
  readonly allocatedBytes: number;
}

export interface ExportView {
  readonly name: string;
  readonly kind: ExportKind;
  readonly description: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly format?: string;
  readonly chain: LayerView[];
  readonly connections: number;
  /** Set when the export could not be inspected (e.g. its overlay file is damaged). */
  readonly error?: string;
}

export interface ConnectionView {
  readonly id: number;
  readonly export: string;
  readonly client: string;
  /** TLS client identity (certificate CN or PSK user); null without TLS. */
  readonly identity: string | null;
  readonly since: string;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly requests: number;
  readonly errors: number;
  readonly inFlight: number;
}

export interface OverlayDirInfo {
  overlayPath(name: string): string;
}

export interface OperationsOptions {
  readonly server: NbdServer;
  readonly guard: GuardedProvider;
  readonly exports: ReloadableExports;
  readonly overlays?: OverlayDirInfo;
  readonly ephemeralName?: string;
  /** Opens an overlay file read-only for inspection (its chain as the server would open it). */
  readonly inspect: (file: string) => Promise<BlockDevice>;
  /** I/O policy for layers stacked by snapshots. */
  readonly io?: FileIo;
  readonly log: Logger;
}

export class Operations {
  /** Allocation figures, measured in the background (export-figures.ts). */
  readonly figures: ExportFigures;
  /** Per export: reset, delete and snapshot run one at a time. */
  private readonly busy = new Map<string, Promise<unknown>>();

  constructor(private readonly o: OperationsOptions) {
    this.figures = new ExportFigures({ ...o, kindOf: (name) => this.kindOf(name) });
  }

  connections(): ConnectionView[] {
    return this.o.server
      .listConnections()
      .filter((c) => c.exportName !== undefined)
      .map((c) => ({
        id: c.id,
        export: c.exportName!,
        client: c.peer,
        identity: c.identity ?? null,
        since: c.since.toISOString(),
        ...c.stats,
        inFlight: c.requestsInFlight,
      }));
  }

  async exportNames(): Promise<string[]> {
    return (await this.o.guard.inner.list()).map((e) => e.name);
  }

  async exports(): Promise<ExportView[]> {
    const names = await this.exportNames();
    const out: ExportView[] = [];
    for (const name of names) {
      // An export that cannot be inspected is listed with the reason, not hidden.
      const view = await this.exportView(name).catch((err: Error): ExportView | undefined =>
        err instanceof ApiError && err.status === 404
          ? undefined
          : { name, kind: this.kindOf(name) ?? 'static', description: '', size: 0, readOnly: true, chain: [], connections: this.connectionsTo(name).length, error: err.message },
      );
      if (view) out.push(view);
    }
    return out;
  }

  async exportView(name: string): Promise<ExportView> {
    const kind = this.kindOf(name);
    const info = await this.o.guard.inner.describe(name);
    if (!kind || !info) throw new ApiError(404, `no export "${name}"`);
    const connections = this.connectionsTo(name).length;
    const base = { name, kind, description: info.description, size: info.size, readOnly: !info.capabilities.writable, connections };
    if (kind === 'ephemeral') return { ...base, format: 'cow', chain: [] };
    const chain = (await this.figures.get(name, 0)).layers;
    return { ...base, format: chain[0]?.format, chain };
  }

  async allocation(name: string, buckets: number): Promise<Allocation> {
    if (!this.kindOf(name) || this.kindOf(name) === 'ephemeral') throw new ApiError(404, `no export "${name}" with an overlay`);
    return (await this.figures.get(name, buckets)).allocation;
  }

  /** Throw the top overlay away: a pristine disk over its backing. */
  reset(name: string, force: boolean): Promise<{ disconnected: number }> {
    return this.serial(name, () => this.doReset(name, force));
  }

  remove(name: string, force: boolean): Promise<{ disconnected: number; deleted: string[] }> {
    return this.serial(name, () => this.doRemove(name, force));
  }

  /** Freeze the export's top overlay and stack a new one on it; live when in use. */
  snapshot(name: string): Promise<SnapshotResult & { export: string }> {
    return this.serial(name, () => this.doSnapshot(name));
  }

  private serial<T>(name: string, fn: () => Promise<T>): Promise<T> {
    // Whatever the operation did, the export's cached figures describe the files before it.
    const run = (this.busy.get(name) ?? Promise.resolve()).then(fn).finally(() => this.figures.invalidate(name));
    const tail = run.catch(() => {});
    this.busy.set(name, tail);
    void tail.then(() => {
      if (this.busy.get(name) === tail) this.busy.delete(name);
    });
    return run;
  }

  private async doReset(name: string, force: boolean): Promise<{ disconnected: number }> {
    const kind = this.requireKind(name);
    return this.o.guard.hold(name, async () => {
      const disconnected = await this.disconnect(name, force);
      if (kind === 'static') {
        const file = this.o.exports.config(name)!.path;
        const backing = await readCowBacking(file).catch((err: Error) => {
          throw new ApiError(400, `export "${name}" is not a cow overlay, nothing to reset (${err.message})`);
        });
        await this.o.exports.rebuild(name, () => recreateCowOver(file, backing));
      } else {
        const file = this.o.overlays!.overlayPath(name);
        const layers = await snapshotLayerFiles(file);
        // Over the newest snapshot when there is one; otherwise the provider makes a
        // fresh overlay over the base at the next connect.
        if (layers.length) await recreateCowOver(file, await readCowBacking(file));
        else await unlink(file).catch(ignoreMissing);
      }
      this.o.log.info({ export: name, disconnected }, 'export reset to its backing');
      return { disconnected };
    });
  }

  /** Delete a per-machine overlay and all its snapshot layers. */
  private async doRemove(name: string, force: boolean): Promise<{ disconnected: number; deleted: string[] }> {
    const kind = this.requireKind(name);
    if (kind !== 'overlay') {
      throw new ApiError(400, `export "${name}" is ${kind === 'static' ? 'defined in the configuration: remove it there and reload' : 'ephemeral: it has no files to delete'}`);
    }
    return this.o.guard.hold(name, async () => {
      const disconnected = await this.disconnect(name, force);
      const file = this.o.overlays!.overlayPath(name);
      const deleted = [file, ...(await snapshotLayerFiles(file))];
      for (const f of deleted) await unlink(f).catch(ignoreMissing);
      this.o.log.info({ export: name, disconnected, deleted }, 'overlay deleted');
      return { disconnected, deleted };
    });
  }

  private async doSnapshot(name: string): Promise<SnapshotResult & { export: string }> {
    const kind = this.requireKind(name);
    let result: SnapshotResult;
    if (kind === 'static') {
      const config = this.o.exports.config(name)!;
      if (config.readOnly) throw new ApiError(400, `export "${name}" is read-only: nothing to snapshot`);
      const device = this.o.exports.device(name);
      if (!(device instanceof SwappableDevice)) throw new ApiError(400, `export "${name}" is not a writable cow overlay: nothing to snapshot`);
      result = await liveSnapshot(device, config.path, this.o.io);
    } else {
      const top = this.o.overlays!.overlayPath(name);
      const device = this.o.guard.swappableFor(name);
      if (device) {
        result = await liveSnapshot(device, top, this.o.io);
      } else {
        const backing = await readCowBacking(top).catch((err: NodeJS.ErrnoException) => {
          throw err.code === 'ENOENT' ? new ApiError(404, `no overlay for "${name}" yet (created at its first connection)`) : err;
        });
        result = await this.o.guard.hold(name, () => offlineSnapshot(top, alignUp(backing.size, 512)));
      }
    }
    this.o.log.info({ export: name, ...result }, 'snapshot taken');
    return { export: name, ...result };
  }

  kindOf(name: string): ExportKind | undefined {
    if (this.o.exports.config(name)) return 'static';
    if (this.o.ephemeralName !== undefined && name === this.o.ephemeralName) return 'ephemeral';
    if (this.o.overlays && overlayNameProblem(name) === undefined) return 'overlay';
    return undefined;
  }

  connectionsTo(name: string): Connection[] {
    return this.o.server.listConnections().filter((c) => c.exportName === name);
  }

  private requireKind(name: string): ExportKind {
    const kind = this.kindOf(name);
    if (!kind) throw new ApiError(404, `no export "${name}"`);
    if (kind === 'ephemeral') throw new ApiError(400, `export "${name}" is ephemeral: every connection already starts pristine`);
    return kind;
  }

  /** Refuse (409) unless `force`; with force, close the export's connections and wait. */
  private async disconnect(name: string, force: boolean): Promise<number> {
    let total = 0;
    // Loop: a client that was opening the export when the hold began may appear late.
    for (let round = 0; round < 20; round++) {
      const conns = this.connectionsTo(name);
      if (conns.length === 0) return total;
      if (!force) throw new ApiError(409, `export "${name}" has ${conns.length} connected client(s); add ?force=true to disconnect them`);
      for (const c of conns) c.destroy();
      await Promise.all(conns.map((c) => c.closed));
      total += conns.length;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new ApiError(409, `export "${name}" keeps getting new connections`);
  }
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}

