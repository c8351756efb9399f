/**
 * Export registry. The server asks an ExportProvider three questions:
 *
 *   list()                → LIST (names + descriptions)
 *   describe(name)        → INFO, LIST/SET_META_CONTEXT: what GO *would* report (size,
 *                           capabilities). MUST NOT create per-client state: a client that
 *                           only asks INFO (nbdinfo --list) must leave no overlay behind.
 *   open(name, ctx)       → GO / EXPORT_NAME: an ExportHandle with the device to serve;
 *                           handle.release() is called exactly once when the connection ends.
 *   close()               → server stop: flush and close every device it opened.
 *
 * INFO and GO must agree (NBD spec: "it MUST return the same information"), so both are
 * derived from ExportInfo by transmissionFlags() below, never computed twice.
 *
 * Providers:
 *   StaticExportProvider  named exports from the CLI; ONE shared device per export, opened
 *                         lazily on first use and kept until close(), so every connection
 *                         sees the same data (honest CAN_MULTI_CONN).
 *   (planned) overlay-dir: DIR/NAME.cow per export name, created on first open();
 *   (planned) ephemeral:   a temp overlay per open(), deleted by release(), multiConn false.
 *   Both fit this interface: describe() reports the base's size without creating anything.
 */
import type { BlockDevice, DeviceCapabilities } from '../block/block-device.js';
import { openImage, type ImageFormat } from '../formats/open-image.js';
import { isLayered, overlayBitmapNames } from './dirty-bitmaps.js';
import type { Logger } from '../logging.js';
import { DEFAULT_PREFERRED_BLOCK_SIZE, MAX_PAYLOAD, MIN_BLOCK_SIZE, NbdFlag } from '../protocol/constants.js';

export interface ExportSummary {
  readonly name: string;
  readonly description: string;
}

export interface ExportInfo extends ExportSummary {
  readonly size: number;
  readonly capabilities: DeviceCapabilities;
  readonly preferredBlockSize: number;
  /**
   * Names of the export's qemu:dirty-bitmap:NAME contexts, asked only by LIST/SET_META_CONTEXT
   * (dirty-bitmaps.ts). Absent: none. Must create nothing, like describe().
   */
  readonly dirtyBitmaps?: () => Promise<readonly string[]>;
}

export interface ExportHandle extends ExportInfo {
  readonly device: BlockDevice;
  /** The connection using this handle has ended (after its in-flight requests finished). */
  release(): Promise<void>;
}

/**
 * An export handle whose release runs `release` exactly once, however often it is called
 * (a connection may release on error and again on close): every provider and wrapper uses
 * this one rule instead of its own flag.
 */
export function releaseOnce(fields: Omit<ExportHandle, 'release'>, release: () => Promise<void>): ExportHandle {
  let released = false;
  return {
    ...fields,
    release: async () => {
      if (released) return;
      released = true;
      await release();
    },
  };
}

export interface ExportContext {
  readonly connId: number;
  readonly peer: string;
  /** TLS-authenticated client identity (certificate CN or PSK username), if any. */
  readonly identity?: string;
}

export interface ExportProvider {
  list(): Promise<ExportSummary[]>;
  describe(name: string): Promise<ExportInfo | undefined>;
  open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined>;
  close(): Promise<void>;
  /** Optional: why an unknown `name` is refused (for the operator's log). */
  refusalReason?(name: string): string | undefined;
}

/** Transmission flags for an export; `structured` = structured replies negotiated (SEND_DF). */
export function transmissionFlags(info: ExportInfo, structured: boolean): number {
  const caps = info.capabilities;
  let f = NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.SEND_CACHE;
  if (caps.writable) {
    // TRIM is a hint (ignored when the device cannot), WRITE_ZEROES is emulated when
    // needed; FAST_ZERO is advertised even when we must answer ENOTSUP (clients then
    // skip pre-zeroing quickly instead of guessing).
    f |= NbdFlag.SEND_TRIM | NbdFlag.SEND_WRITE_ZEROES | NbdFlag.SEND_FAST_ZERO;
  } else {
    f |= NbdFlag.READ_ONLY;
  }
  if (structured) f |= NbdFlag.SEND_DF;
  if (caps.multiConn) f |= NbdFlag.CAN_MULTI_CONN;
  return f;
}

/** NBD_INFO_BLOCK_SIZE triple: min 1 (kernel clients need ≤ 512), preferred, max 32 MiB. */
export function blockSizeConstraints(info: ExportInfo): [min: number, preferred: number, max: number] {
  const p = info.preferredBlockSize;
  const preferred = Number.isInteger(p) && p >= 512 && p <= MAX_PAYLOAD && (p & (p - 1)) === 0 ? p : DEFAULT_PREFERRED_BLOCK_SIZE;
  return [MIN_BLOCK_SIZE, preferred, MAX_PAYLOAD];
}

export interface StaticExportConfig {
  readonly name: string;
  readonly path: string;
  readonly readOnly?: boolean;
  readonly description?: string;
  readonly format?: ImageFormat;
  readonly backingFormat?: ImageFormat;
  /** TLS identities allowed to see and open this export (undefined = everyone). */
  readonly allow?: readonly string[];
  /**
   * How this export's definition says "serve the bytes as raw", for the refusal of a foreign
   * image (default: `format=raw in the definition of export "NAME"`; the CLI's IMAGE: `-f raw`).
   */
  readonly rawOption?: string;
}

/** Opens an image for an export (injectable for tests and future providers). */
export type DeviceOpener = (config: StaticExportConfig) => Promise<BlockDevice>;

export const defaultOpener: DeviceOpener = (c) =>
  openImage(c.path, { readOnly: c.readOnly, format: c.format, backingFormat: c.backingFormat });

interface StaticEntry {
  readonly config: StaticExportConfig;
  opening?: Promise<BlockDevice>;
  /** The opened top layer is an overlay (it has dirty bitmaps); asked once, describe() is costly. */
  layered?: boolean;
}

export class StaticExportProvider implements ExportProvider {
  private readonly entries = new Map<string, StaticEntry>();
  private closed = false;

  constructor(
    exports: readonly StaticExportConfig[],
    private readonly log: Logger,
    private readonly opener: DeviceOpener = defaultOpener,
  ) {
    for (const config of exports) {
      if (this.entries.has(config.name)) throw new Error(`duplicate export name "${config.name}"`);
      this.entries.set(config.name, { config });
    }
  }

  list(): Promise<ExportSummary[]> {
    return Promise.resolve(
      [...this.entries.values()].map((e) => ({ name: e.config.name, description: e.config.description ?? '' })),
    );
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    const entry = this.entries.get(name);
    if (!entry) return undefined;
    return this.info(entry, await this.device(entry));
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    const entry = this.entries.get(name);
    if (!entry) return undefined;
    const device = await this.device(entry);
    this.log.debug({ export: name, conn: ctx.connId }, 'export opened for connection');
    // The device is shared and stays open until close(): release() has nothing to do.
    return { ...this.info(entry, device), device, release: () => Promise.resolve() };
  }

  async close(): Promise<void> {
    this.closed = true;
    const devices: BlockDevice[] = [];
    for (const e of this.entries.values()) {
      if (!e.opening) continue;
      try {
        devices.push(await e.opening);
      } catch {
        // The open failed; nothing to close.
      }
    }
    await Promise.all(
      devices.map(async (d) => {
        try {
          if (d.capabilities.writable) await d.flush();
        } catch (err) {
          this.log.error({ err }, 'flush at shutdown failed');
        }
        await d.close();
      }),
    );
  }

  private device(entry: StaticEntry): Promise<BlockDevice> {
    if (this.closed) return Promise.reject(Object.assign(new Error('server is shutting down'), { code: 'ESHUTDOWN' }));
    if (!entry.opening) {
      const c = entry.config;
      this.log.info({ export: c.name, path: c.path, readOnly: Boolean(c.readOnly) }, 'opening export image');
      entry.opening = this.opener(c);
      // A failed open is retried by the next client rather than cached forever.
      entry.opening.catch(() => {
        entry.opening = undefined;
      });
    }
    return entry.opening;
  }

  private info(entry: StaticEntry, device: BlockDevice): ExportInfo {
    return {
      name: entry.config.name,
      description: entry.config.description ?? '',
      size: device.size,
      capabilities: device.capabilities,
      preferredBlockSize: device.preferredBlockSize,
      dirtyBitmaps: () => overlayBitmapNames(entry.config.path, (entry.layered ??= isLayered(device))),
    };
  }
}

/**
 * Several providers behind one server (e.g. static `--export`s plus an overlay-dir):
 * LIST concatenates, lookups go to the first provider that knows the name.
 */
export class CompositeExportProvider implements ExportProvider {
  constructor(private readonly providers: readonly ExportProvider[]) {}

  async list(): Promise<ExportSummary[]> {
    const seen = new Set<string>();
    const out: ExportSummary[] = [];
    for (const p of this.providers) {
      for (const e of await p.list()) {
        if (!seen.has(e.name)) {
          seen.add(e.name);
          out.push(e);
        }
      }
    }
    return out;
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    for (const p of this.providers) {
      const info = await p.describe(name);
      if (info) return info;
    }
    return undefined;
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    for (const p of this.providers) {
      const handle = await p.open(name, ctx);
      if (handle) return handle;
    }
    return undefined;
  }

  async close(): Promise<void> {
    await Promise.all(this.providers.map((p) => p.close()));
  }

  refusalReason(name: string): string | undefined {
    for (const p of this.providers) {
      const reason = p.refusalReason?.(name);
      if (reason) return reason;
    }
    return undefined;
  }
}
