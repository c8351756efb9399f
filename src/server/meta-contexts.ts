/**
 * The metadata contexts of an export (docs/protocol.md#meta-contexts): which exist, which
 * contexts a LIST_META_CONTEXT / SET_META_CONTEXT query names, and the ids a SET assigns.
 * What each context reports per extent is decided at BLOCK_STATUS time
 * (transmission-commands.ts; dirty bitmaps: dirty-bitmaps.ts).
 *
 *   base:allocation               every export (id 1)
 *   qemu:allocation-depth         every export (id 2)
 *   qemu:dirty-bitmap:NAME        exports whose top layer is an overlay: NAME = "overlay"
 *                                 and one "snap-N" per snapshot layer (ids 3, 4, … in the
 *                                 order a SET selected them)
 *
 * Query rules follow qemu-nbd's (docs/protocol.md#meta-contexts): LIST with no query lists
 * everything, a query ending in ':' ("base:", "qemu:", "qemu:dirty-bitmap:") lists every
 * context under it; SET selects exact names only.
 */
import { META_BASE_ALLOCATION, META_QEMU_ALLOCATION_DEPTH, META_QEMU_DIRTY_BITMAP_PREFIX } from '../protocol/constants.js';
import type { ExportInfo } from './exports.js';

export const CONTEXT_ID_BASE_ALLOCATION = 1;
export const CONTEXT_ID_ALLOCATION_DEPTH = 2;
/** Dirty bitmaps are numbered from here, per SET (ids only need to be unique per connection). */
const FIRST_BITMAP_ID = 3;

/** A context a SET selected, with the id its BLOCK_STATUS chunks carry. */
export interface SelectedContext {
  readonly id: number;
  readonly name: string;
}

/** Every context `info` offers, in reply order (the standard two first, then the bitmaps). */
export async function exportContexts(info: ExportInfo): Promise<string[]> {
  const bitmaps = (await info.dirtyBitmaps?.()) ?? [];
  return [META_BASE_ALLOCATION, META_QEMU_ALLOCATION_DEPTH, ...bitmaps.map((b) => META_QEMU_DIRTY_BITMAP_PREFIX + b)];
}

/** The contexts of `available` that `queries` name, in `available`'s order. */
export function matchContexts(available: readonly string[], queries: readonly string[], list: boolean): string[] {
  if (queries.length === 0) return list ? [...available] : [];
  return available.filter((name) => queries.some((q) => q === name || (list && q.endsWith(':') && name.startsWith(q))));
}

/** Ids for a SET's selection: the standard contexts keep theirs, bitmaps are numbered in order. */
export function assignContextIds(names: readonly string[]): SelectedContext[] {
  let next = FIRST_BITMAP_ID;
  return names.map((name) => ({
    name,
    id: name === META_BASE_ALLOCATION ? CONTEXT_ID_BASE_ALLOCATION : name === META_QEMU_ALLOCATION_DEPTH ? CONTEXT_ID_ALLOCATION_DEPTH : next++,
  }));
}

export function isDirtyBitmap(name: string): boolean {
  return name.startsWith(META_QEMU_DIRTY_BITMAP_PREFIX);
}
