/**
 * ChunkTable: a version's chunk hashes as one Buffer of 32 bytes per chunk, the form a
 * server keeps in memory (and on disk, manifest-binary.ts) instead of one hex string per
 * chunk. A 1 TiB image of 1 MiB chunks is one 32 MiB Buffer outside the JS heap, not a
 * million strings (~100 MiB of heap and a GC scan); one table per version is shared by
 * every export and overlay of the process (manifest-cache.ts).
 *
 *   entry i = bytes [32·i, 32·i + 32): the SHA-256 of chunk i, or 32 zero bytes for an
 *             all-zero chunk (not stored; `null` in the JSON manifest)
 *
 * 32 zero bytes cannot be a stored chunk's name: finding a SHA-256 preimage of it is as hard
 * as any preimage (docs/object-store.md); the JSON decoder refuses it anyway.
 *
 * CompactManifest is a Manifest (the shape publish, gc and fsck use) over a table: its
 * `chunks` array of hex strings is built only when someone asks for it (tools walking
 * every chunk), never by the read path, which asks the table.
 */
import type { Manifest } from './manifest.js';

export const HASH_BYTES = 32;

export class ChunkTable {
  readonly count: number;
  private stored: number | undefined;

  /** `bytes`: count × 32 bytes (not copied; never changed afterwards). */
  constructor(readonly bytes: Buffer) {
    if (bytes.length % HASH_BYTES !== 0) throw new Error(`chunk table of ${bytes.length} bytes is not a whole number of ${HASH_BYTES}-byte entries`);
    this.count = bytes.length / HASH_BYTES;
  }

  /** From hex strings (null: zero chunk); the caller has validated them. */
  static fromHex(chunks: readonly (string | null)[]): ChunkTable {
    const bytes = Buffer.alloc(chunks.length * HASH_BYTES);
    chunks.forEach((h, i) => {
      if (h !== null) bytes.write(h, i * HASH_BYTES, HASH_BYTES, 'hex');
    });
    return new ChunkTable(bytes);
  }

  isZero(index: number): boolean {
    const b = this.bytes;
    const o = index * HASH_BYTES;
    // A stored chunk's hash is non-zero in its first bytes almost always: usually one test.
    for (let k = o; k < o + HASH_BYTES; k += 4) if (b.readUInt32LE(k) !== 0) return false;
    return true;
  }

  /** Chunk `index`'s SHA-256 as lower-case hex, or null for a zero chunk (or past the end). */
  hash(index: number): string | null {
    if (index < 0 || index >= this.count || this.isZero(index)) return null;
    return this.bytes.toString('hex', index * HASH_BYTES, (index + 1) * HASH_BYTES);
  }

  /** Chunks that are stored (not zero); counted once (the table never changes). */
  storedCount(): number {
    if (this.stored === undefined) {
      let n = 0;
      for (let i = 0; i < this.count; i++) if (!this.isZero(i)) n++;
      this.stored = n;
    }
    return this.stored;
  }

  toHex(): (string | null)[] {
    return Array.from({ length: this.count }, (_, i) => this.hash(i));
  }
}

export type ManifestFields = Omit<Manifest, 'chunks'>;

/** A Manifest whose chunks live in a ChunkTable; `chunks` (hex strings) is made on first use. */
export interface CompactManifest extends Manifest {
  readonly table: ChunkTable;
}

export function compactManifest(fields: ManifestFields, table: ChunkTable): CompactManifest {
  const m = {
    version: fields.version,
    created: fields.created,
    virtualSize: fields.virtualSize,
    chunkSize: fields.chunkSize,
    chunkPrefix: fields.chunkPrefix,
    ...(fields.source === undefined ? {} : { source: fields.source }),
  };
  let hex: (string | null)[] | undefined;
  // `chunks` enumerable (a spread or a deep comparison sees a plain manifest); `table` not.
  Object.defineProperty(m, 'chunks', { enumerable: true, get: () => (hex ??= table.toHex()) });
  Object.defineProperty(m, 'table', { enumerable: false, value: table });
  return Object.freeze(m) as unknown as CompactManifest;
}

/** The table of any manifest: its own when compact, else built from its hex strings. */
export function chunkTableOf(m: Manifest): ChunkTable {
  return (m as Partial<CompactManifest>).table ?? ChunkTable.fromHex(m.chunks);
}
