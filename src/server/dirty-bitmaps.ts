/**
 * Changed-block tracking with no state of its own (docs/protocol.md#dirty-bitmaps): an
 * overlay chain already records what changed, layer by layer, and every device extent
 * carries the depth of the layer that holds it (block-device.ts, Extent.depth).
 *
 *   depth 1  vm.cow            the top, written to
 *         2  vm.snap-2.cow     frozen by snapshot 2   qemu:dirty-bitmap:snap-2 = depth 1
 *         3  vm.snap-1.cow     frozen by snapshot 1   qemu:dirty-bitmap:snap-1 = depth 1..2
 *         4  golden.img        the base               qemu:dirty-bitmap:overlay = depth 1..3
 *
 * "snap-N" = what changed since snapshot N: the ranges held by the layers above its frozen
 * layer. "overlay" = what changed since the base: the ranges held by the top and its
 * snapshot layers (with no snapshot, just the top). Depth 0 (zeros past the base's end)
 * and the base's own extents are clean.
 *
 * Meanings are by NAME, resolved against the chain the extents came from: a live snapshot
 * taken during a connection stacks a layer (all depths grow by one), and snap-2 still means
 * "since snapshot 2", now including the layer that snapshot 3 froze. A snapshot layer merged
 * away by compaction (which disconnects clients first) answers as "overlay", a superset:
 * a backup driven by it copies more, never less.
 */
import type { BlockDevice, Extent, LayerInfo } from '../block/block-device.js';
import { snapshotLayerFiles, snapshotLayerNumber } from '../formats/cow/cow-layers.js';
import { META_QEMU_DIRTY_BITMAP_PREFIX, NBD_STATE_DIRTY, NbdError } from '../protocol/constants.js';
import { RequestError } from '../protocol/nbd-errors.js';
import type { SelectedContext } from './meta-contexts.js';

/** The bitmap of everything the overlay (top and snapshot layers) holds over its base. */
export const OVERLAY_BITMAP = 'overlay';

/** The bitmap name of the snapshot that froze `frozen`, a snapshot layer of `top`. */
export function snapshotBitmapName(top: string, frozen: string): string | undefined {
  const n = snapshotLayerNumber(top, frozen);
  return n === undefined ? undefined : `snap-${n}`;
}

/**
 * The bitmaps of an export whose top layer is the file `top` (from the files: opens
 * nothing, so INFO-style questions leave no state behind): none unless `layered` (the
 * top has a backing), else "overlay" and one per snapshot layer, oldest first.
 */
export async function overlayBitmapNames(top: string, layered = true): Promise<string[]> {
  if (!layered) return [];
  const snapshots = (await snapshotLayerFiles(top)).map((f) => snapshotBitmapName(top, f)!);
  return [OVERLAY_BITMAP, ...snapshots];
}

/** Whether a device's top layer is an overlay (has a backing). Costly (describe()): ask once. */
export function isLayered(device: BlockDevice): boolean {
  return device.describe().backing !== undefined;
}

/** Depths of a chain: the deepest overlay layer, and each snapshot layer's depth by bitmap name. */
export interface ChainDepths {
  readonly overlay: number;
  readonly snapshots: ReadonlyMap<string, number>;
}

export function chainDepths(top: LayerInfo): ChainDepths {
  const snapshots = new Map<string, number>();
  let overlay = 1;
  let depth = 1;
  for (let layer = top.backing; layer && top.path && layer.path; layer = layer.backing) {
    depth++;
    const name = snapshotBitmapName(top.path, layer.path);
    if (name === undefined) break; // the base: the overlay ends above it
    snapshots.set(name, depth);
    overlay = depth;
  }
  return { overlay, snapshots };
}

/** NBD_STATE_DIRTY for the extents bitmap `name` marks (by its depth in `chain`). */
export function dirtyValue(name: string, chain: ChainDepths): (e: Extent) => number {
  const snapshot = chain.snapshots.get(name);
  // Unknown (merged away): everything since the base, a superset (see the design note).
  const deepest = snapshot === undefined ? chain.overlay : snapshot - 1;
  return (e) => (e.depth >= 1 && e.depth <= deepest ? NBD_STATE_DIRTY : 0);
}

export interface ContextValue {
  readonly id: number;
  readonly value: (e: Extent) => number;
}

/** A swap in the middle of a BLOCK_STATUS is retried; this many in a row is an error. */
const MAX_ATTEMPTS = 8;

/**
 * One connection's selected dirty bitmaps. The chain is read with describe() once, and again
 * only when the device's chainGeneration says a snapshot stacked a layer.
 */
export class DirtyBitmapView {
  /** The value functions for the chain of `generation`: rebuilt only when a snapshot stacks a layer. */
  private chain: { generation: number | undefined; values: readonly ContextValue[] } | undefined;

  constructor(
    private readonly device: BlockDevice,
    private readonly selected: readonly SelectedContext[],
  ) {}

  /**
   * Run `collect` (which asks the device for extents) so that no snapshot lands in its
   * middle, and return its result with each selected bitmap's value function for the
   * chain those extents describe. A swap between the two generation reads means the
   * extents may mix chains: they are collected again.
   */
  async collect<T>(collect: () => Promise<T>): Promise<{ result: T; values: readonly ContextValue[] }> {
    if (this.selected.length === 0) return { result: await collect(), values: [] };
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const before = this.device.chainGeneration;
      const result = await collect();
      const after = this.device.chainGeneration;
      // Synchronous from here: describe() sees the chain of generation `after`.
      if (before === after) return { result, values: this.values(after) };
    }
    throw new RequestError(NbdError.EIO, `the layer chain changed ${MAX_ATTEMPTS} times during one BLOCK_STATUS`);
  }

  private values(generation: number | undefined): readonly ContextValue[] {
    if (!this.chain || this.chain.generation !== generation) {
      const depths = chainDepths(this.device.describe());
      const values = this.selected.map((c) => ({ id: c.id, value: dirtyValue(c.name.slice(META_QEMU_DIRTY_BITMAP_PREFIX.length), depths) }));
      this.chain = { generation, values };
    }
    return this.chain.values;
  }
}
