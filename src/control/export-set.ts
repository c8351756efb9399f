/**
 * ReloadableExports: the named (static) exports, replaceable at run time by a reload.
 *
 * Each export is a *generation*: its config plus ONE shared device (so every connection
 * to it sees the same data and CAN_MULTI_CONN stays honest) and a count of the
 * connections holding it. apply(newConfigs) compares old and new by name:
 *
 *   unchanged  same device key (path, format, backing format, read-only) → the same
 *              generation object; its connections never notice (a new description is
 *              just taken over).
 *   added      a new generation, its device opened NOW (a missing file fails the reload).
 *   changed    a new generation for new connections; the old one is *retired*: its
 *              connections keep working on the old device, which is flushed and closed
 *              when the last of them leaves.
 *   removed    retired the same way; new connections no longer see the name.
 *
 * All new devices are opened before anything is switched: when one fails, the ones
 * opened are closed again and the error is thrown, so a bad reload changes nothing.
 * Two writable devices on one file would each keep their own allocation bitmap and
 * corrupt it, so a change that would open a file writable while a retired generation
 * still has it open writable (e.g. a format change under connected clients) is refused.
 */
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import type { Logger } from '../logging.js';
import { isLayered, overlayBitmapNames } from '../server/dirty-bitmaps.js';
import { releaseOnce, type ExportContext, type ExportHandle, type ExportInfo, type ExportProvider, type ExportSummary, type StaticExportConfig } from '../server/exports.js';

/** Opens the device of an export (injected: serve passes openImage with its options). */
export type ExportOpener = (config: StaticExportConfig) => Promise<BlockDevice>;

interface Generation {
  config: StaticExportConfig;
  readonly key: string;
  readonly device: BlockDevice;
  refs: number;
  retired: boolean;
  closing?: Promise<void>;
  /** Its top layer is an overlay (it has dirty bitmaps); asked once, describe() is costly. */
  layered?: boolean;
}

export interface ReloadDiff {
  readonly added: string[];
  readonly removed: string[];
  readonly changed: string[];
  readonly unchanged: string[];
}

/** An error that names the export it concerns (a reload reports it as the reason). */
export class ExportOpenError extends Error {
  override name = 'ExportOpenError';
}

function deviceKey(c: StaticExportConfig): string {
  return JSON.stringify([path.resolve(c.path), c.format ?? null, c.backingFormat ?? null, Boolean(c.readOnly)]);
}

export class ReloadableExports implements ExportProvider {
  private current = new Map<string, Generation>();
  /** Every generation with an open device: current ones and retired ones still in use. */
  private readonly live = new Set<Generation>();
  private closed = false;
  /** Serialises apply() calls (a SIGHUP during an API reload). */
  private applying: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly opener: ExportOpener,
    private readonly log: Logger,
  ) {}

  /** Open every export now (start-up): an error names the export and its file. */
  static async open(configs: readonly StaticExportConfig[], opener: ExportOpener, log: Logger): Promise<ReloadableExports> {
    const set = new ReloadableExports(opener, log);
    await set.apply(configs);
    return set;
  }

  names(): string[] {
    return [...this.current.keys()];
  }

  config(name: string): StaticExportConfig | undefined {
    return this.current.get(name)?.config;
  }

  /** The shared device of a current export (for the admin API and snapshots). */
  device(name: string): BlockDevice | undefined {
    return this.current.get(name)?.device;
  }

  list(): Promise<ExportSummary[]> {
    return Promise.resolve([...this.current.values()].map((g) => ({ name: g.config.name, description: g.config.description ?? '' })));
  }

  describe(name: string): Promise<ExportInfo | undefined> {
    const g = this.current.get(name);
    return Promise.resolve(g && info(g));
  }

  open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    const g = this.current.get(name);
    if (!g || this.closed) return Promise.resolve(undefined);
    g.refs++;
    this.log.debug({ export: name, conn: ctx.connId }, 'export opened for connection');
    return Promise.resolve(
      releaseOnce({ ...info(g), device: g.device }, async () => {
        g.refs--;
        if (g.retired && g.refs === 0) await this.closeGeneration(g);
      }),
    );
  }

  /** Replace the export set; returns what changed. Throws (changing nothing) on failure. */
  apply(configs: readonly StaticExportConfig[]): Promise<ReloadDiff> {
    const run = this.applying.then(() => this.doApply(configs));
    this.applying = run.catch(() => {});
    return run;
  }

  /**
   * Close the export's device (no connection may hold it: the caller disconnected them and
   * holds new ones off), run `change` on its files, and open it again. When reopening
   * fails the export is gone until the next reload, and the error says why.
   */
  rebuild(name: string, change: (config: StaticExportConfig) => Promise<void>): Promise<void> {
    const run = this.applying.then(async () => {
      const g = this.current.get(name);
      if (!g) throw new ExportOpenError(`no export "${name}"`);
      if (g.refs > 0) throw new ExportOpenError(`export "${name}" still has ${g.refs} connection(s)`);
      this.current.delete(name);
      await this.closeGeneration(g);
      let changeError: { err: unknown } | undefined;
      try {
        await change(g.config);
      } catch (err) {
        changeError = { err };
      }
      const [reopened] = await this.openAll([g.config]);
      this.live.add(reopened!);
      this.current.set(name, reopened!);
      if (changeError) throw changeError.err;
    });
    this.applying = run.catch(() => {});
    return run;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.applying;
    await Promise.all([...this.live].map((g) => this.closeGeneration(g)));
    this.current.clear();
  }

  private async doApply(configs: readonly StaticExportConfig[]): Promise<ReloadDiff> {
    if (this.closed) throw new Error('server is shutting down');
    const next = new Map<string, Generation>();
    const diff: ReloadDiff = { added: [], removed: [], changed: [], unchanged: [] };
    const toOpen: StaticExportConfig[] = [];
    for (const c of configs) {
      if (next.has(c.name) || toOpen.some((o) => o.name === c.name)) throw new ExportOpenError(`export name "${c.name}" is used twice`);
      const old = this.current.get(c.name);
      if (old && old.key === deviceKey(c)) {
        next.set(c.name, old);
        (isSameConfig(old.config, c) ? diff.unchanged : diff.changed).push(c.name);
      } else {
        toOpen.push(c);
        (old ? diff.changed : diff.added).push(c.name);
      }
    }
    for (const name of this.current.keys()) if (!configs.some((c) => c.name === name)) diff.removed.push(name);
    this.refuseDoubleWriters(toOpen, next);
    // An unused old definition of a file about to be reopened is closed first (the server
    // refuses to open one file writable and read-only at once); restored if opening fails.
    const idle = [...this.current.values()].filter(
      (g) => next.get(g.config.name) !== g && g.refs === 0 && toOpen.some((c) => path.resolve(c.path) === path.resolve(g.config.path)),
    );
    for (const g of idle) this.current.delete(g.config.name); // no client may get a closing device
    await Promise.all(idle.map((g) => this.closeGeneration(g)));
    let opened: Generation[];
    try {
      opened = await this.openAll(toOpen);
    } catch (err) {
      await this.restore(idle);
      throw err;
    }
    // Commit: nothing below can fail.
    for (const g of opened) {
      next.set(g.config.name, g);
      this.live.add(g);
    }
    for (const c of configs) {
      const g = next.get(c.name)!;
      if (!opened.includes(g)) g.config = c; // description and the like
    }
    const retired = [...this.current.values()].filter((g) => next.get(g.config.name) !== g);
    this.current = next;
    for (const g of retired) {
      g.retired = true;
      if (g.refs === 0) void this.closeGeneration(g);
      else this.log.info({ export: g.config.name, connections: g.refs }, 'export retired: existing connections continue, new ones get the new definition');
    }
    return diff;
  }

  /** Reopen generations closed for a reload that then failed. */
  private async restore(closed: readonly Generation[]): Promise<void> {
    for (const g of closed) {
      try {
        const [again] = await this.openAll([g.config]);
        this.live.add(again!);
        this.current.set(g.config.name, again!);
      } catch (err) {
        this.current.delete(g.config.name);
        this.log.error({ export: g.config.name, reason: (err as Error).message }, 'export could not be reopened after a failed reload; it is gone until the next reload');
      }
    }
  }

  private refuseDoubleWriters(toOpen: readonly StaticExportConfig[], keep: ReadonlyMap<string, Generation>): void {
    const writableOpen = new Map<string, string>();
    for (const g of this.live) {
      const staying = keep.get(g.config.name) === g;
      const inUse = staying || g.refs > 0;
      if (inUse && !g.config.readOnly) writableOpen.set(path.resolve(g.config.path), g.config.name);
    }
    for (const c of toOpen) {
      if (c.readOnly) continue;
      const holder = writableOpen.get(path.resolve(c.path));
      if (holder !== undefined) {
        throw new ExportOpenError(
          `export "${c.name}": ${c.path} is still open writable for export "${holder}" (connected clients); ` +
            'two writers would corrupt it — apply this change after they disconnect',
        );
      }
    }
  }

  private async openAll(configs: readonly StaticExportConfig[]): Promise<Generation[]> {
    const opened: Generation[] = [];
    for (const c of configs) {
      try {
        const device = await this.opener(c);
        // debug, after the open: a failed open is the single error line serve exits with.
        this.log.debug({ export: c.name, path: c.path, readOnly: Boolean(c.readOnly), size: device.size }, 'export image opened');
        opened.push({ config: c, key: deviceKey(c), device, refs: 0, retired: false });
      } catch (err) {
        await Promise.all(opened.map((g) => g.device.close().catch(() => {})));
        const message = (err as Error).message;
        // Drivers usually name the file already; do not say it twice.
        const what = message.includes(c.path) ? `export "${c.name}"` : `export "${c.name}" (${c.path})`;
        throw new ExportOpenError(`${what}: ${message}`);
      }
    }
    return opened;
  }

  private closeGeneration(g: Generation): Promise<void> {
    g.closing ??= (async () => {
      try {
        if (g.device.capabilities.writable) await g.device.flush();
      } catch (err) {
        this.log.error({ err, export: g.config.name }, 'flush of a closing export failed');
      }
      await g.device.close().catch((err: unknown) => this.log.error({ err, export: g.config.name }, 'closing export failed'));
      this.live.delete(g);
      if (g.retired) this.log.info({ export: g.config.name }, 'retired export closed');
    })();
    return g.closing;
  }
}

function info(g: Generation): ExportInfo {
  return {
    name: g.config.name,
    description: g.config.description ?? '',
    size: g.device.size,
    capabilities: g.device.capabilities,
    preferredBlockSize: g.device.preferredBlockSize,
    dirtyBitmaps: () => overlayBitmapNames(g.config.path, (g.layered ??= isLayered(g.device))),
  };
}

function isSameConfig(a: StaticExportConfig, b: StaticExportConfig): boolean {
  return deviceKey(a) === deviceKey(b) && (a.description ?? '') === (b.description ?? '');
}
