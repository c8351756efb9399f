/**
 * FormatRecord: everything cownbd knows how to do with one image format (or backing
 * type), behind one value — the way QEMU's BlockDriver and nbdkit's plugin struct work.
 * The registry (registry.ts) lists the records; the opener, the CLI, the tools and the
 * export providers dispatch through them and never test format names themselves.
 *
 *   claims(spec)      a spec the record owns by its form (e.g. an `s3://` URI), before
 *                     anything is read; checked first, for named images and backings
 *   probe(head)       the first bytes of a file the OPERATOR named look like this format
 *                     (never used for backing files: a guest can write any magic)
 *   open(spec, req)   the driver; backing layers come from req.openBacking, so a format
 *                     never imports the opener (no cycle)
 *   create / inspect / check / layer / rebase   what the image tools need (optional
 *                     where a format has nothing to say: raw has no backing, no check)
 *
 * Sizes of a backing always come from the OPENED backing device (openBacking), for every
 * format: a file's length is the disk size only for raw (docs/cow-format.md, chains).
 */
import type { BlockDevice, LayerInfo } from '../block/block-device.js';
import type { FileIo } from '../block/file-io.js';
import type { FileHandle } from 'node:fs/promises';
import type { ObjectStoreContext } from '../objectstore/open.js';
import type { Collected } from './check-report.js';
import type { LayerInspection } from './inspection.js';
import type { PathMapping } from './path-map.js';

/**
 * Opens a backing layer by spec and format name: always read-only, never probed. `more`
 * carries what the layer below needs for ITS backing (a snapshot layer passes the
 * configured backing format down).
 */
export type OpenBacking = (spec: string, format: string, more?: { readonly backingFormat?: string; readonly ignoreMtime?: boolean }) => Promise<BlockDevice>;

/** What every layer of one stack shares (passed down the chain unchanged). */
export interface StackContext {
  readonly io: FileIo;
  /** Rewrites of paths recorded in overlay headers (path-map.ts). */
  readonly pathMap?: readonly PathMapping[];
  /** Object-store access, for records that open s3:// specs (created on first use). */
  readonly objectStore?: () => Promise<ObjectStoreContext>;
}

export interface OpenRequest extends StackContext {
  readonly readOnly: boolean;
  /** The spec came from an image header (a backing): the server's --allow-path applies. */
  readonly referenced?: boolean;
  readonly openBacking: OpenBacking;
  /** Format names openBacking accepts (for validating a name recorded in a header). */
  readonly knownFormats: readonly string[];
  /** Override the backing path recorded in the image (cow: like uml_moo -b). */
  readonly backingFile?: string;
  /** Format of the backing (default: as recorded, else raw). */
  readonly backingFormat?: string;
  /** cow: skip the backing mtime check (recovery). */
  readonly ignoreMtime?: boolean;
  /** cow: force a header layout when detection is ambiguous. */
  readonly layout?: string;
}

export interface CreateRequest {
  readonly backing?: string;
  readonly backingFormat?: string;
  /**
   * The format of a backing the operator named without --backing-format, given the path
   * as this format resolves it: raw, or a refusal of a foreign image (registry.ts
   * namedBackingFormat). Absent: raw.
   */
  readonly defaultBackingFormat?: (backing: string) => Promise<string>;
  /** Virtual size; formats whose size is the backing's refuse a different one. */
  readonly size?: number;
  /** add-cow: the image file holding guest data. */
  readonly image?: string;
  /** add-cow: cluster size in bytes. */
  readonly clusterSize?: number;
  /**
   * For `convert -O`: `size` is the source's virtual size the new image must show; add-cow
   * derives the image name from `path` when none is given and replaces an existing one
   * with force. Otherwise (`create`) `size` is the operator's --size.
   */
  readonly forConvert?: boolean;
  readonly force?: boolean;
  readonly io: FileIo;
  readonly openBacking: OpenBacking;
}

export interface CreateResult {
  /** Files the create made (a failed caller removes them). */
  readonly files: readonly string[];
  /** Things the operator should know (printed on stderr by the CLI). */
  readonly notes: readonly string[];
}

export interface InspectRequest {
  readonly layout?: string;
  readonly backingFile?: string;
  readonly backingFormat?: string;
  readonly openBacking: OpenBacking;
}

export interface CheckRequest {
  readonly layout?: string;
  readonly backingFile?: string;
  /**
   * The disk size of backing file `file` opened in the format the operator named (cow
   * headers record no backing format: a cow over a qcow2 compares the qcow2's virtual size,
   * not its file length). Undefined: the backing is raw, its length is its size.
   */
  readonly backingSizeOf?: (file: string) => Promise<number>;
  /** An in-place commit is unfinished: the backing mtime has legitimately moved. */
  readonly commitPending: boolean;
  /**
   * size + mtime of an s3:// backing as a header records them (docs/object-store.md); throws
   * ObjectNotFoundError-named errors when the pinned version does not exist. Without it an
   * s3:// backing cannot be checked.
   */
  readonly remoteBackingStat?: (address: string) => Promise<{ size: number; mtime: number }>;
}

/** commit's output length choice (see tools/commit.ts). */
export type OutputSize = 'backing' | 'virtual' | 'uml-moo';

/** Facts about the TOP layer of an open chain, for commit, rebase and convert. */
export interface OverlayLayer {
  readonly format: string;
  /** Allocation unit in bytes (cow: 512; add-cow: the cluster size). */
  readonly unit: number;
  readonly backingPath: string | undefined;
  /** Format the backing is opened with. */
  readonly backingFormat: string | undefined;
  /** Allocated byte ranges [start, end) of the top layer, clipped to the disk, in order. */
  runs(): Generator<[number, number]>;
  allocatedBytes(): number;
  /** commit -o: length of the merged file for `mode` (default: the format's choice). */
  outputLength(mode: OutputSize | undefined, virtualSize: number): number;
  /** commit --to: how far into the target to write (below `limit`). */
  commitLimit(limit: number, mode: OutputSize | undefined): number;
  /** commit --to: refuse when allocated data would not fit a target of `targetSize`. */
  checkCommitFits(targetSize: number, file: string, target: string): void;
  /** commit --to: the size the journal expects of the target, and the header mtime. */
  journalFacts(targetSize: number): { expectedSize: number; headerMtime: number | null };
  /**
   * commit --to finished: keep the overlay valid over the changed target; true if it wrote.
   * `notify` takes a line for the operator (a format never writes to stderr itself).
   */
  afterCommit(file: string, target: string, updateHeader: boolean, notify?: (line: string) => void): Promise<boolean>;
}

export interface RebaseRequest {
  /** The new backing as the operator gave it, and resolved. */
  readonly newBacking: string;
  readonly newPath: string;
  readonly newBackingFormat?: string;
  readonly unsafe: boolean;
  readonly force?: boolean;
  readonly layout?: string;
  readonly backingFile?: string;
  readonly ignoreMtime?: boolean;
  /** Opens the current backing (validation of an s3:// one goes through its device). */
  readonly openBacking: OpenBacking;
  /** Safe mode: copy the old view wherever the new backing differs; returns bytes copied. */
  readonly copyDivergent: (newFormat: string) => Promise<number>;
}

export interface RebaseOutcome {
  readonly oldBacking: string | null;
  /** What the header now stores. */
  readonly storedBacking: string;
  readonly bytesCopied: number;
}

/** Size, capabilities and block size a device would report, for INFO before it exists. */
export type ExportGeometry = Pick<BlockDevice, 'size' | 'capabilities' | 'preferredBlockSize'>;

export interface FormatRecord {
  readonly name: string;
  /** One line for help texts. */
  readonly summary: string;
  /** Has a backing chain and metadata of its own (commit, rebase and check apply). */
  readonly overlay: boolean;
  claims?(spec: string): boolean;
  probe?(head: Buffer): boolean;
  /** The file name ending images of this format carry (check: such a file without magic is broken). */
  readonly fileSuffix?: string;
  open(spec: string, req: OpenRequest): Promise<BlockDevice>;
  /** A function property, not a method: `.filter((f) => f.create)` reads it detached. */
  readonly create?: (path: string, req: CreateRequest) => Promise<CreateResult>;
  inspect(path: string, req: InspectRequest): Promise<LayerInspection>;
  /** Metadata consistency findings for `path` (opened read-only as `fh`). */
  check?(path: string, fh: FileHandle, req: CheckRequest, out: Collected): Promise<void>;
  /** The top-layer facts of an open device of this format (undefined: not this format). */
  layer?(device: BlockDevice): OverlayLayer | undefined;
  rebase?(path: string, req: RebaseRequest): Promise<RebaseOutcome>;
  /** A writable image of this format can be snapshotted live (cow-layers.ts: freeze the top, stack a new one). */
  readonly liveSnapshots?: boolean;
  /** What a new writable overlay of this format over `backing` will report (INFO before GO). */
  overlayGeometry?(backing: BlockDevice, io: FileIo, multiConn: boolean): ExportGeometry;
  /**
   * Where a layer of this format keeps the bytes of the guest ranges it holds (`layer`: its
   * device's describe()), for qemu-img's "offset" in `map --output=json`
   * (docs/image-tool.md). Absent: no offsets are reported (as qemu-img for such drivers).
   */
  hostOffsets?(layer: LayerInfo): Promise<HostOffsets>;
}

/** A layer's guest → file offsets: `at` answers [length, offset | undefined] pieces covering the range. */
export interface HostOffsets {
  at(start: number, length: number): Promise<ReadonlyArray<readonly [number, number | undefined]>>;
  close(): Promise<void>;
}

/** Guest offset n at file offset `base + n` (raw files, add-cow image files, cow data areas). */
export function linearOffsets(base: number): HostOffsets {
  return { at: async (start, length) => [[length, base + start]], close: async () => {} };
}

/**
 * size + mtime of a backing that is not a local file (an s3:// image: its virtual size and
 * its manifest's time), from its device: what a cow header records and checks for it.
 */
export function remoteStat(openBacking: OpenBacking, format: string): (spec: string) => Promise<{ size: number; mtime: number }> {
  return (spec) =>
    withBacking(openBacking, spec, format, (dev) => {
      const mtime = dev.describe().detail?.mtime;
      if (typeof mtime !== 'number') throw new Error(`backing "${spec}" reports no mtime`);
      return { size: dev.size, mtime };
    });
}

/** Open `spec` as a backing, run `fn` on it, close it: the one "open, read, close". */
export async function withBacking<T>(openBacking: OpenBacking, spec: string, format: string, fn: (dev: BlockDevice) => T | Promise<T>): Promise<T> {
  const dev = await openBacking(spec, format);
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}
