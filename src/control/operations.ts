/**
 * What the admin API can see and do, independent of HTTP (the API maps ApiError to a
 * status code; everything else is a 500 that never stops the server).
 *
 *   exports()      every export the server offers: kind, chain with bytes per layer,
 *                  connections
 *   connections()  every client in transmission: export, peer, since, bytes, in flight
 *   reset(name)    throw the top overlay away (a pristine disk over its backing)
 *   remove(name)   delete a per-machine overlay (--overlay-dir) with all its layers
 *   compact(name)  merge the oldest snapshot layers into one (compact.ts)
 *
 * reset/remove/compact refuse (409) while clients are connected unless `force`, which
 * disconnects them first (their running requests finish, then the sockets close). New
 * clients are held off (GuardedProvider) for the whole operation. "Connected" counts
 * every client from the moment it starts opening the export until its release has
 * closed the files (GuardedProvider users), not only clients in transmission: a client
 * still opening would otherwise keep writing into a file deleted under it.
 *
 * compact is not live: it replaces and deletes frozen layers the open device reads, so
 * it runs like reset, under a hold with nobody connected (static exports: the device is
 * closed and reopened around it, ReloadableExports.rebuild).
 *
 * snapshot keeps the device of a per-machine overlay in use while it swaps (a pin), so
 * the last client leaving cannot close it mid-snapshot; with nobody connected it stacks
 * the layer offline under a hold, once no client is opening or closing the overlay.
 * At most `maxSnapshots` layers per export (the chain limit is MAX_CHAIN_DEPTH, 64).
 *
 * Allocation figures (bytes per layer, the status page's map) come from ExportFigures:
 * measured in the background, never per request, so polling cannot stall the data path
 * (export-figures.ts).
 */
import { unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
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
import { DEFAULT_MAX_SNAPSHOTS, snapshotsFull } from './snapshot-limit.js';
import { ApiError } from './api-error.js';
import { CompactRefused, compactLayers, type CompactResult } from './compact.js';

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
  /** NAME.cow was deleted: release its --max-overlays count. */
  overlayRemoved(): void;
}

export interface OperationsOptions {
  readonly server: NbdServer;
  readonly guard: GuardedProvider;
  readonly exports: ReloadableExports;
  readonly overlays?: OverlayDirInfo;
  readonly ephemeralName?: string;
  /**
   * Opens an overlay file with its chain as the server would: read-only for inspection,
   * writable only for the new layer a compaction builds (compact.ts).
   */
  readonly inspect: (file: string, writable?: boolean) => Promise<BlockDevice>;
  /** I/O policy for layers stacked by snapshots. */
  readonly io?: FileIo;
  /** Snapshot layers an export may have (`--max-snapshots`, default DEFAULT_MAX_SNAPSHOTS). */
  readonly maxSnapshots?: number;
  readonly log: Logger;
}

/** How long a forced reset or delete waits for the disconnected clients to let go. */
const RELEASE_TIMEOUT_MS = 60_000;

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

  /** Merge the oldest snapshot layers until at most `keep` remain (default: one). */
  compact(name: string, keep: number, force: boolean): Promise<CompactResult & { export: string; disconnected: number }> {
    return this.serial(name, () => this.doCompact(name, keep, force));
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
        else if (await unlinkExisting(file)) this.o.overlays!.overlayRemoved();
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
      const layers = await snapshotLayerFiles(file);
      const deleted = [file, ...layers];
      // The machine stops counting against --max-overlays with its top file.
      if (await unlinkExisting(file)) this.o.overlays!.overlayRemoved();
      for (const f of layers) await unlink(f).catch(ignoreMissing);
      this.o.log.info({ export: name, disconnected, deleted }, 'overlay deleted');
      return { disconnected, deleted };
    });
  }

  private async doCompact(name: string, keep: number, force: boolean): Promise<CompactResult & { export: string; disconnected: number }> {
    const kind = this.requireKind(name);
    const top = kind === 'static' ? this.o.exports.config(name)!.path : this.o.overlays!.overlayPath(name);
    return this.o.guard.hold(name, async () => {
      if ((await snapshotLayerFiles(top)).length === 0) {
        throw new ApiError(400, `export "${name}" has no snapshot layers: nothing to compact`);
      }
      const disconnected = await this.disconnect(name, force);
      const open = (file: string, writable: boolean) => this.o.inspect(file, writable);
      const compact = () =>
        compactLayers(top, keep, open).catch((err: Error) => {
          throw err instanceof CompactRefused ? new ApiError(409, `export "${name}": ${err.message}`) : err;
        });
      let result: CompactResult | undefined;
      if (kind === 'static') {
        // The export's device reads the frozen layers: closed during the merge, reopened after.
        await this.o.exports.rebuild(name, async () => {
          result = await compact();
        });
      } else {
        result = await compact();
      }
      this.o.log.info({ export: name, disconnected, ...result }, 'snapshot layers compacted');
      return { export: name, disconnected, ...result! };
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
      await this.checkSnapshotRoom(name, config.path);
      result = await liveSnapshot(device, config.path, this.o.io);
    } else {
      result = await this.overlaySnapshot(name, this.o.overlays!.overlayPath(name));
    }
    this.o.log.info({ export: name, ...result }, 'snapshot taken');
    return { export: name, ...result };
  }

  /**
   * Live while a client has the overlay open (pinned, so it stays open until the swap is
   * done), offline when nobody has: decided under a hold, taken only when no client is
   * half-way in (opening) or out (its release still flushing and closing the files); else
   * retried once that client is through (the hold is that short so it refuses nobody).
   */
  private async overlaySnapshot(name: string, top: string): Promise<SnapshotResult> {
    for (const end = Date.now() + RELEASE_TIMEOUT_MS; Date.now() < end; await sleep(10)) {
      const live = await this.o.guard.withPinned(name, async (device) => {
        await this.checkSnapshotRoom(name, top);
        return liveSnapshot(device, top, this.o.io);
      });
      if (live) return live.result;
      const offline = await this.o.guard.hold(name, async () => {
        if (this.o.guard.usersOf(name).length > 0) return undefined;
        const backing = await readCowBacking(top).catch((err: NodeJS.ErrnoException) => {
          throw err.code === 'ENOENT' ? new ApiError(404, `no overlay for "${name}" yet (created at its first connection)`) : err;
        });
        await this.checkSnapshotRoom(name, top);
        return offlineSnapshot(top, alignUp(backing.size, 512));
      });
      if (offline) return offline;
    }
    throw new ApiError(409, `export "${name}" keeps getting connected and disconnected; try again`);
  }

  /** Refuse (409) a snapshot that would give the export more than maxSnapshots layers. */
  private async checkSnapshotRoom(name: string, top: string): Promise<void> {
    const full = await snapshotsFull(top, this.o.maxSnapshots ?? DEFAULT_MAX_SNAPSHOTS);
    if (full) throw new ApiError(409, `export "${name}" ${full}`);
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

  /**
   * Under the operation's hold: refuse (409) unless `force` while any client opens or has
   * the export open; with force, close those connections and wait until every one has
   * released the export (its device flushed and closed when it was the last).
   */
  private async disconnect(name: string, force: boolean): Promise<number> {
    const ids = this.o.guard.usersOf(name);
    if (ids.length === 0) return 0;
    if (!force) throw new ApiError(409, `export "${name}" has ${ids.length} connected client(s); add ?force=true to disconnect them`);
    const wanted = new Set(ids);
    for (const c of this.o.server.listConnections()) if (wanted.has(c.id)) c.destroy();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new ApiError(409, `export "${name}": ${this.o.guard.usersOf(name).length} client(s) did not let go within ${RELEASE_TIMEOUT_MS / 1000} s`)), RELEASE_TIMEOUT_MS);
    });
    try {
      await Promise.race([this.o.guard.whenUnused(name), timeout]);
    } finally {
      clearTimeout(timer);
    }
    return ids.length;
  }
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}

/** Unlink `file`; false when it did not exist. */
async function unlinkExisting(file: string): Promise<boolean> {
  try {
    await unlink(file);
    return true;
  } catch (err) {
    ignoreMissing(err as NodeJS.ErrnoException);
    return false;
  }
}

