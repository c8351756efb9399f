/**
 * Guest offset → where its bytes are: the qcow2 two-level lookup (L1 → L2 → cluster) and
 * the classification of L2 entries, standard and extended (docs/qcow2-format.md,
 * "Cluster mapping", "Extended L2 entries", "Compressed clusters").
 *
 * mapRange() answers with contiguous Pieces: runs to read from the file at a host offset
 * (adjacent host runs merged, so a sequential read is one pread), runs that read as zeros,
 * runs that fall through to the backing, and compressed clusters. The read path and the
 * block-status path both use it, so what is read and what is reported cannot disagree.
 *
 * L2 tables are loaded in slices of at most 4 KiB (QEMU's l2-cache-entry-size idea): a
 * random 4 KiB read of an image with 2 MiB clusters costs one 4 KiB metadata read, not
 * 2 MiB, and the cache budget holds 512 times more useful entries.
 *
 * Entries are validated as they are used: a misaligned host offset, a subcluster both
 * allocated and zero, or an allocated subcluster without a host cluster is EIO naming the
 * guest offset and the entry — never a guess.
 */
import { DeviceError } from '../../block/block-device.js';
import type { Qcow2Header } from './qcow2-header.js';

export type Piece =
  | { readonly kind: 'data'; readonly length: number; readonly host: number }
  | { readonly kind: 'zero'; readonly length: number }
  | { readonly kind: 'backing'; readonly length: number }
  | {
      readonly kind: 'compressed';
      readonly length: number;
      /** Guest offset of the cluster start (the decompressed cluster's cache key). */
      readonly cluster: number;
      /** Offset of the wanted bytes inside the decompressed cluster. */
      readonly within: number;
      readonly host: number;
      readonly hostLength: number;
    };

/** L2 metadata is read in slices of this many bytes (or the whole table if smaller). */
export const L2_SLICE_BYTES = 4096;

const TWO32 = 0x1_0000_0000;
/** Bits 9-55 of a table entry: host offset (high word keeps bits 32-55). */
const HI_OFFSET_MASK = 0x00ff_ffff;
const LO_OFFSET_MASK = 0xffff_fe00;
const COMPRESSED_BIT_HI = 0x4000_0000;
const SUBCLUSTERS = 32;

export interface L2Source {
  /** The L2 slice at file offset `at` (cached by the caller), `length` bytes. */
  slice(at: number, length: number): Promise<Buffer>;
}

export class Qcow2Map {
  readonly sliceBytes: number;
  private readonly entriesPerSlice: number;
  private readonly subclusterSize: number;
  /** Compressed descriptor: bits [0, csizeShift) host offset, then (sectors - 1). */
  private readonly csizeShift: bigint;
  private readonly csizeMask: bigint;
  private readonly coffsetMask: bigint;

  constructor(
    private readonly header: Qcow2Header,
    /** The active L1 table as stored (big-endian u64 entries). */
    private readonly l1: Buffer,
    private readonly source: L2Source,
    private readonly label: string,
  ) {
    this.sliceBytes = Math.min(header.clusterSize, L2_SLICE_BYTES);
    this.entriesPerSlice = this.sliceBytes / header.l2EntrySize;
    this.subclusterSize = header.clusterSize / SUBCLUSTERS;
    this.csizeShift = BigInt(62 - (header.clusterBits - 8));
    this.csizeMask = (1n << BigInt(header.clusterBits - 8)) - 1n;
    this.coffsetMask = (1n << this.csizeShift) - 1n;
  }

  /** Pieces covering [offset, offset + length) exactly, in order. */
  async mapRange(offset: number, length: number): Promise<Piece[]> {
    const out: Piece[] = [];
    const cs = this.header.clusterSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const guestCluster = Math.floor(pos / cs);
      const l2Index = guestCluster % this.header.l2Entries;
      const l1Index = (guestCluster - l2Index) / this.header.l2Entries;
      const l2Offset = this.l1Entry(l1Index);
      // One slice serves every cluster it describes: walk them without another lookup.
      const sliceIndex = Math.floor(l2Index / this.entriesPerSlice);
      const firstInSlice = sliceIndex * this.entriesPerSlice;
      const sliceEndGuest = (guestCluster - l2Index + firstInSlice + this.entriesPerSlice) * cs;
      const stop = Math.min(end, sliceEndGuest);
      if (l2Offset === 0) {
        push(out, { kind: 'backing', length: stop - pos });
        pos = stop;
        continue;
      }
      const slice = await this.source.slice(l2Offset + sliceIndex * this.sliceBytes, this.sliceBytes);
      while (pos < stop) {
        const c = Math.floor(pos / cs);
        const entryAt = ((c % this.header.l2Entries) - firstInSlice) * this.header.l2EntrySize;
        const clusterEnd = Math.min(stop, (c + 1) * cs);
        this.classify(slice, entryAt, c * cs, pos, clusterEnd, out);
        pos = clusterEnd;
      }
    }
    return out;
  }

  /** Host offset of the L2 table for `l1Index` (0: unallocated). */
  private l1Entry(l1Index: number): number {
    if (l1Index >= this.header.l1Size) return 0; // beyond the table: unallocated
    const hi = this.l1.readUInt32BE(l1Index * 8);
    const lo = this.l1.readUInt32BE(l1Index * 8 + 4);
    const at = (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
    if (at % this.header.clusterSize !== 0) {
      throw new DeviceError('EIO', `${this.label}: corrupt image: L1 entry ${l1Index} points to L2 table at ${at}, not aligned to the cluster size ${this.header.clusterSize}`);
    }
    return at;
  }

  /** Pieces for [from, to) inside the guest cluster starting at `clusterStart`. */
  private classify(slice: Buffer, entryAt: number, clusterStart: number, from: number, to: number, out: Piece[]): void {
    const hi = slice.readUInt32BE(entryAt);
    const lo = slice.readUInt32BE(entryAt + 4);
    if (hi & COMPRESSED_BIT_HI) {
      const desc = (BigInt(hi & 0x3fff_ffff) << 32n) | BigInt(lo >>> 0);
      const host = Number(desc & this.coffsetMask);
      const sectors = Number((desc >> this.csizeShift) & this.csizeMask) + 1;
      push(out, { kind: 'compressed', length: to - from, cluster: clusterStart, within: from - clusterStart, host, hostLength: sectors * 512 - (host % 512) });
      return;
    }
    const host = (hi & HI_OFFSET_MASK) * TWO32 + ((lo & LO_OFFSET_MASK) >>> 0);
    if (host % this.header.clusterSize !== 0) {
      throw new DeviceError('EIO', `${this.label}: corrupt image: guest offset ${clusterStart} maps to host offset ${host}, not aligned to the cluster size ${this.header.clusterSize}`);
    }
    if (!this.header.extendedL2) {
      // Bit 0: reads as zeros whatever the offset says (QEMU honours it in v2 images too).
      if (lo & 1) push(out, { kind: 'zero', length: to - from });
      else if (host === 0) push(out, { kind: 'backing', length: to - from });
      else push(out, { kind: 'data', length: to - from, host: host + (from - clusterStart) });
      return;
    }
    const zeroBits = slice.readUInt32BE(entryAt + 8);
    const allocBits = slice.readUInt32BE(entryAt + 12);
    if ((zeroBits & allocBits) !== 0) {
      throw new DeviceError('EIO', `${this.label}: corrupt image: guest cluster at ${clusterStart} has subclusters both allocated and zero (bitmap 0x${zeroBits.toString(16)}${allocBits.toString(16).padStart(8, '0')})`);
    }
    if (allocBits !== 0 && host === 0) {
      throw new DeviceError('EIO', `${this.label}: corrupt image: guest cluster at ${clusterStart} has allocated subclusters but no host cluster`);
    }
    const sc = this.subclusterSize;
    let pos = from;
    while (pos < to) {
      const i = Math.floor((pos - clusterStart) / sc);
      const subEnd = Math.min(to, clusterStart + (i + 1) * sc);
      const bit = 1 << i;
      if (allocBits & bit) push(out, { kind: 'data', length: subEnd - pos, host: host + (pos - clusterStart) });
      else if (zeroBits & bit) push(out, { kind: 'zero', length: subEnd - pos });
      else push(out, { kind: 'backing', length: subEnd - pos });
      pos = subEnd;
    }
  }
}

/** Append `p`, merging it into the previous piece when they continue each other. */
function push(out: Piece[], p: Piece): void {
  const last = out[out.length - 1];
  if (last && last.kind === p.kind && p.kind !== 'compressed') {
    if (p.kind !== 'data' || (last.kind === 'data' && last.host + last.length === p.host)) {
      out[out.length - 1] = { ...last, length: last.length + p.length } as Piece;
      return;
    }
  }
  out.push(p);
}
