/**
 * Export providers that make copy-on-write overlays on demand over one golden base image.
 *
 *   OverlayDirProvider  `serve --base golden.img --overlay-dir DIR`
 *                       export NAME ⇒ DIR/NAME.cow (a UML v3 cow over the base), created on
 *                       the first GO for that name and reused after; every connection to
 *                       NAME shares one device (CAN_MULTI_CONN stays honest). The device is
 *                       flushed and closed when its last connection ends.
 *
 *   EphemeralProvider   `serve --ephemeral golden.img`
 *                       every connection gets its own temporary overlay, deleted when the
 *                       connection closes. Such exports never advertise CAN_MULTI_CONN: a
 *                       second connection would see a different disk.
 *                       Overlay files carry the server's pid in their name; at start-up the
 *                       files of dead pids are removed (left-overs of a crashed server).
 *
 * Neither provider creates anything in describe() (INFO, LIST_META_CONTEXT): the size and
 * flags come from the base, so `nbdinfo --list` leaves no overlay behind.
 *
 * Export names become file names, so they are sanitised: [A-Za-z0-9._-], not starting
 * with a dot or a dash, at most MAX_OVERLAY_NAME bytes. A refused name answers ERR_UNKNOWN and logs.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, readdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { pidAlive, removeDeadTemps } from '../util/atomic-file.js';
import type { BlockDevice } from '../block/block-device.js';
import { FileIo } from '../block/file-io.js';
import type { ExportGeometry } from '../formats/format-record.js';
import { createImage, openImage, type ImageFormat } from '../formats/open-image.js';
import { DEFAULT_OVERLAY_FORMAT } from '../formats/registry.js';
import type { Logger } from '../logging.js';
import { OVERLAY_LIMIT_DEFAULTS, OverlayQuota, type OverlayLimits } from './overlay-quota.js';
import { overlayFileSize } from './overlay-size.js';
import type { ObjectStoreContext } from '../objectstore/open.js';
import { OVERLAY_BITMAP, overlayBitmapNames } from './dirty-bitmaps.js';
import { releaseOnce, type ExportContext, type ExportHandle, type ExportInfo, type ExportProvider, type ExportSummary } from './exports.js';

export const MAX_OVERLAY_NAME = 128;
/** No leading "." (hidden, "..") nor "-" (read as an option by tools given the file name). */
const OVERLAY_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
/** The format of the overlays made on demand (cow: one file per overlay, uml_mkcow-compatible). */
const OVERLAY_FORMAT = DEFAULT_OVERLAY_FORMAT;

/** Why `name` cannot be an overlay file name, or undefined if it can. */
export function overlayNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'the empty export name has no overlay (name the machine, e.g. nbd://host/vm1)';
  if (Buffer.byteLength(name) > MAX_OVERLAY_NAME) return `longer than ${MAX_OVERLAY_NAME} bytes`;
  if (!OVERLAY_NAME.test(name)) return 'only letters, digits, ".", "_" and "-" are allowed, and no leading "." or "-"';
  if (name.includes('..')) return '".." is not allowed';
  // NAME.snap-N.cow are frozen snapshot layers (formats/cow/cow-layers.ts), never exports.
  if (/\.snap-\d+$/.test(name)) return 'names ending in ".snap-<N>" are reserved for snapshot layers';
  return undefined;
}

export interface BaseImage {
  readonly path: string;
  /** Format of the base; never probed (default raw). */
  readonly format: ImageFormat;
  /** Open existing overlays even if the base's mtime changed (`serve --ignore-mtime`). */
  readonly ignoreMtime?: boolean;
  /** I/O policy for the base and the overlays (default: every fast path). */
  readonly io?: FileIo;
  /** Access to s3:// bases (path is then a pinned s3://BUCKET/PREFIX@VERSION address). */
  readonly objectStore?: () => Promise<ObjectStoreContext>;
}

/**
 * What INFO reports for an overlay that does not exist yet: the overlay format's record
 * answers from the opened base (the same values the device reports after GO).
 */
async function overlayGeometry(base: BaseImage, multiConn: boolean): Promise<ExportGeometry> {
  const io = base.io ?? new FileIo();
  const dev = await openImage(base.path, { readOnly: true, format: base.format, io, objectStore: base.objectStore });
  try {
    return OVERLAY_FORMAT.overlayGeometry!(dev, io, multiConn);
  } finally {
    await dev.close();
  }
}

/** A new overlay over the base; the record measures the base through its device. */
async function createOverlay(file: string, base: BaseImage): Promise<void> {
  await createImage(OVERLAY_FORMAT.name, file, { backing: base.path, backingFormat: base.format, io: base.io, objectStore: base.objectStore });
}

async function fileExists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

function openOverlay(file: string, base: BaseImage): Promise<BlockDevice> {
  return openImage(file, { format: OVERLAY_FORMAT.name, backingFormat: base.format, ignoreMtime: base.ignoreMtime, io: base.io, objectStore: base.objectStore });
}

interface SharedOverlay {
  opening: Promise<BlockDevice>;
  refs: number;
  /** Set while the last user's release flushes and closes the device. */
  closing?: Promise<void>;
}

export class OverlayDirProvider implements ExportProvider {
  private readonly overlays = new Map<string, SharedOverlay>();
  private closed = false;

  private constructor(
    private readonly base: BaseImage,
    private readonly dir: string,
    private readonly geometry: ExportGeometry,
    private readonly log: Logger,
    private readonly quota: OverlayQuota,
  ) {}

  static async create(base: BaseImage, dir: string, log: Logger, limits: OverlayLimits = OVERLAY_LIMIT_DEFAULTS): Promise<OverlayDirProvider> {
    await mkdir(dir, { recursive: true });
    await removeCreationTemps(dir, log);
    // Machines, not files: snapshot layers (NAME.snap-N.cow) belong to their machine's overlay.
    const existing = (await readdir(dir)).filter((f) => f.endsWith('.cow') && overlayNameProblem(f.slice(0, -4)) === undefined).length;
    const quota = new OverlayQuota(limits, path.resolve(dir), existing, log);
    return new OverlayDirProvider(base, path.resolve(dir), await overlayGeometry(base, true), log, quota);
  }

  overlayPath(name: string): string {
    return path.join(this.dir, `${name}.cow`);
  }

  /**
   * The control plane deleted NAME.cow (admin DELETE, or reset of an overlay without
   * snapshot layers): it no longer counts against --max-overlays. Called only for a file
   * that existed, under the control plane's hold (nobody has NAME open or is opening it).
   */
  overlayRemoved(): void {
    this.quota.release();
  }

  async list(): Promise<ExportSummary[]> {
    const files = await readdir(this.dir).catch(() => [] as string[]);
    return files
      .filter((f) => f.endsWith('.cow') && overlayNameProblem(f.slice(0, -4)) === undefined)
      .sort()
      .map((f) => ({ name: f.slice(0, -4), description: this.description(f.slice(0, -4)) }));
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    if (overlayNameProblem(name)) return undefined;
    // An existing overlay's own size (it may be pinned to an older, smaller base version).
    const size = await overlayFileSize(this.overlayPath(name));
    return size === undefined ? this.info(name) : { ...this.info(name), size };
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    if (overlayNameProblem(name)) return undefined;
    const device = await this.acquire(name, ctx);
    if (!device) return undefined; // a new overlay would break --max-overlays / --min-free
    // size: the overlay's, not the server's base's (overlay-size.ts)
    return releaseOnce({ ...this.info(name), size: device.size, device }, () => this.releaseOne(name));
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(
      [...this.overlays.entries()].map(async ([name, entry]) => {
        entry.refs = 0;
        await this.shutdown(name, entry);
      }),
    );
  }

  /** Why `name` can be no overlay (the handshake logs it once per connection). */
  refusalReason(name: string): string | undefined {
    return overlayNameProblem(name);
  }

  private info(name: string): ExportInfo {
    return {
      name,
      description: this.description(name),
      size: this.geometry.size,
      capabilities: this.geometry.capabilities,
      preferredBlockSize: this.geometry.preferredBlockSize,
      // From the files: an overlay not created yet has an empty "overlay" bitmap.
      dirtyBitmaps: () => overlayBitmapNames(this.overlayPath(name)),
    };
  }

  private description(name: string): string {
    return `cow overlay ${name}.cow over ${path.basename(this.base.path)}`;
  }

  private async acquire(name: string, ctx: ExportContext): Promise<BlockDevice | undefined> {
    if (this.closed) throw Object.assign(new Error('server is shutting down'), { code: 'ESHUTDOWN' });
    let entry = this.overlays.get(name);
    // A previous last user is still closing the device: wait, then open afresh.
    if (entry?.closing) {
      await entry.closing;
      entry = this.overlays.get(name);
    }
    if (!entry) {
      const file = this.overlayPath(name);
      // Only a file that does not exist yet counts against --max-overlays / --min-free.
      const reserved = !(await fileExists(file));
      if (reserved && !(await this.quota.tryReserve(name, { conn: ctx.connId, peer: ctx.peer, identity: ctx.identity }))) return undefined;
      // Another connection may have started the same overlay while we looked.
      entry = this.overlays.get(name);
      if (entry && reserved) this.quota.release();
      entry ??= this.startOverlay(name, file, reserved);
    }
    entry.refs++;
    try {
      return await entry.opening;
    } catch (err) {
      entry.refs--;
      throw err;
    }
  }

  /** Create (unless it exists) and open DIR/NAME.cow; shared by every connection to NAME. */
  private startOverlay(name: string, file: string, reserved: boolean): SharedOverlay {
    const opening = (async () => {
      try {
        await createOverlay(file, this.base);
        this.log.info({ export: name, file }, 'created overlay');
      } catch (err) {
        if (reserved) this.quota.release();
        // Another server (or an earlier run) made it: reuse it.
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      return openOverlay(file, this.base);
    })();
    const entry: SharedOverlay = { opening, refs: 0 };
    this.overlays.set(name, entry);
    opening.catch(() => {
      if (this.overlays.get(name) === entry) this.overlays.delete(name);
    });
    return entry;
  }

  private async releaseOne(name: string): Promise<void> {
    const entry = this.overlays.get(name);
    if (!entry) return;
    entry.refs--;
    if (entry.refs <= 0) await this.shutdown(name, entry);
  }

  private async shutdown(name: string, entry: SharedOverlay): Promise<void> {
    entry.closing ??= (async () => {
      try {
        const device = await entry.opening;
        await device.flush();
        await device.close();
      } catch (err) {
        this.log.error({ err, export: name }, 'closing overlay failed');
      } finally {
        if (this.overlays.get(name) === entry) this.overlays.delete(name);
      }
    })();
    await entry.closing;
  }
}

/** Ephemeral overlay files: cownbd-ephemeral-<pid>-<conn>-<random>.cow */
const EPHEMERAL_FILE = /^cownbd-ephemeral-(\d+)-\d+-[0-9a-f]+\.cow$/;

/** Temp files of overlay creations interrupted by a crash (see util/atomic-file.ts). */
async function removeCreationTemps(dir: string, log: Logger): Promise<void> {
  const removed = await removeDeadTemps(dir);
  if (removed.length) log.info({ dir, files: removed }, 'removed temp files of interrupted overlay creations');
}

export class EphemeralProvider implements ExportProvider {
  private readonly live = new Set<{ file: string; device: BlockDevice }>();

  private constructor(
    private readonly base: BaseImage,
    private readonly exportName: string,
    private readonly dir: string,
    private readonly geometry: ExportGeometry,
    private readonly log: Logger,
    private readonly quota: OverlayQuota,
  ) {}

  static async create(
    base: BaseImage,
    exportName: string,
    dir: string,
    log: Logger,
    limits: OverlayLimits = OVERLAY_LIMIT_DEFAULTS,
  ): Promise<EphemeralProvider> {
    await mkdir(dir, { recursive: true });
    await removeCreationTemps(dir, log);
    const quota = new OverlayQuota(limits, path.resolve(dir), 0, log);
    const provider = new EphemeralProvider(base, exportName, path.resolve(dir), await overlayGeometry(base, false), log, quota);
    await provider.removeLeftovers();
    return provider;
  }

  /** Delete overlays whose server process is gone (a crash or kill -9 left them behind). */
  async removeLeftovers(): Promise<string[]> {
    const removed: string[] = [];
    for (const f of await readdir(this.dir).catch(() => [] as string[])) {
      const m = EPHEMERAL_FILE.exec(f);
      if (!m) continue;
      const pid = Number(m[1]);
      if (pid === process.pid || pidAlive(pid)) continue;
      await unlink(path.join(this.dir, f)).catch(() => {});
      removed.push(f);
    }
    if (removed.length) this.log.info({ dir: this.dir, files: removed }, 'removed left-over ephemeral overlays');
    return removed;
  }

  async list(): Promise<ExportSummary[]> {
    return [{ name: this.exportName, description: this.description() }];
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    return name === this.exportName ? this.info() : undefined;
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    if (name !== this.exportName) return undefined;
    if (!(await this.quota.tryReserve(name, { conn: ctx.connId, peer: ctx.peer, identity: ctx.identity }))) return undefined;
    const file = path.join(this.dir, `cownbd-ephemeral-${process.pid}-${ctx.connId}-${randomBytes(4).toString('hex')}.cow`);
    let device: BlockDevice;
    try {
      await createOverlay(file, this.base);
      device = await openOverlay(file, this.base);
    } catch (err) {
      this.quota.release();
      await unlink(file).catch(() => {});
      throw err;
    }
    const entry = { file, device };
    this.live.add(entry);
    this.log.info({ conn: ctx.connId, peer: ctx.peer, file }, 'ephemeral overlay created');
    return releaseOnce({ ...this.info(), device }, () => this.discard(entry));
  }

  async close(): Promise<void> {
    await Promise.all([...this.live].map((e) => this.discard(e)));
  }

  private async discard(entry: { file: string; device: BlockDevice }): Promise<void> {
    if (!this.live.delete(entry)) return;
    this.quota.release();
    // Throwaway data: no flush, just close and delete.
    await entry.device.close().catch((err: unknown) => this.log.warn({ err, file: entry.file }, 'closing ephemeral overlay failed'));
    await unlink(entry.file).catch(() => {});
    this.log.info({ file: entry.file }, 'ephemeral overlay deleted');
  }

  private info(): ExportInfo {
    return {
      name: this.exportName,
      description: this.description(),
      size: this.geometry.size,
      capabilities: this.geometry.capabilities,
      preferredBlockSize: this.geometry.preferredBlockSize,
      // Never snapshotted: just what this connection's overlay holds.
      dirtyBitmaps: () => Promise.resolve([OVERLAY_BITMAP]),
    };
  }

  private description(): string {
    return `ephemeral overlay per connection over ${path.basename(this.base.path)}`;
  }
}
