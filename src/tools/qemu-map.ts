/**
 * `map --output=json`: the array `qemu-img map --output=json` prints (qemu-img 7.2),
 * `{start, length, depth, present, zero, data[, offset]}` per run, from the same block
 * status the server answers (BlockDevice.blockStatus) plus the host offset of each run
 * in the file of the layer that holds it. docs/image-tool.md "qemu-img's JSON" has the
 * mapping; in short:
 *
 *   depth    qemu-img's is 0-based (0 = FILE itself) where cownbd's is the NBD
 *            qemu:allocation-depth (1 = FILE, 0 = no layer). A run no layer holds gets the
 *            depth of the layer that answers "zeros" for it, as qemu's block layer does:
 *            the first layer (from the top) with no backing, or whose backing ends before
 *            the run.
 *   present  a layer holds the run (cownbd depth > 0).
 *   zero     reads as zeros;  data: not a hole (EXTENT_HOLE clear).
 *   offset   where the bytes are in the layer's file, as its format record says
 *            (FormatRecord.hostOffsets): raw and add-cow (its image file is raw) at the guest
 *            offset, cow at data offset + guest offset, qcow2 data clusters at their host
 *            cluster; none for qcow2 zero and compressed clusters, unallocated runs, or a
 *            format without offsets such as s3:// (as qemu-img: no offset where qemu's
 *            driver reports none).
 *
 * Runs are merged as qemu-img merges them: same depth/present/zero/data and, when they
 * carry offsets, contiguous ones.
 */
import { EXTENT_HOLE, EXTENT_ZERO, type LayerInfo } from '../block/block-device.js';
import { mergeExtents } from '../block/checked-device.js';
import { FORMATS } from '../formats/registry.js';
import { openChain, type ChainOptions } from './chain.js';

export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

const ASK = 1 << 30;

/** Host offsets of a run in one layer: [length, offset | undefined] pieces covering it. */
type OffsetsOf = (start: number, length: number) => Promise<Array<readonly [number, number | undefined]>>;

interface Layer {
  readonly size: number;
  readonly offsets: OffsetsOf;
  close(): Promise<void>;
}

export async function runQemuMap(file: string, options: ChainOptions): Promise<QemuMapEntry[]> {
  const dev = await openChain(file, options);
  const layers: Layer[] = [];
  try {
    for (let info: LayerInfo | undefined = dev.describe(); info; info = info.backing) layers.push(await layerOf(info));
    const out: QemuMapEntry[] = [];
    let pos = 0;
    while (pos < dev.size) {
      for (const e of mergeExtents(await dev.blockStatus(pos, Math.min(ASK, dev.size - pos)))) {
        const zero = (e.flags & EXTENT_ZERO) !== 0;
        const data = (e.flags & EXTENT_HOLE) === 0;
        if (e.depth === 0) {
          push(out, { start: pos, length: e.length, depth: answeringDepth(layers, pos), present: false, zero, data });
        } else {
          let at = pos;
          for (const [length, offset] of await layers[e.depth - 1]!.offsets(pos, e.length)) {
            push(out, { start: at, length, depth: e.depth - 1, present: true, zero, data, ...(offset === undefined ? {} : { offset }) });
            at += length;
          }
        }
        pos += e.length;
      }
    }
    return out;
  } finally {
    for (const l of layers) await l.close().catch(() => {});
    await dev.close();
  }
}

/** qemu's depth of a run no layer holds: the first layer without a backing that covers it. */
function answeringDepth(layers: readonly Layer[], at: number): number {
  for (let i = 0; i < layers.length - 1; i++) if (layers[i + 1]!.size <= at) return i;
  return layers.length - 1;
}

/** A layer's size and its format's host offsets (FormatRecord.hostOffsets; none without). */
async function layerOf(info: LayerInfo): Promise<Layer> {
  const d = info.detail ?? {};
  const size = typeof d.virtualSize === 'number' ? d.virtualSize : typeof d.size === 'number' ? d.size : 0;
  const record = FORMATS.find((f) => f.name === info.format);
  const offsets = record?.hostOffsets ? await record.hostOffsets(info) : undefined;
  if (!offsets) return { size, offsets: async (_s, l) => [[l, undefined]], close: async () => {} };
  return { size, offsets: async (s, l) => [...(await offsets.at(s, l))], close: () => offsets.close() };
}

/** Append `e`, merged into the previous entry when qemu-img would merge them. */
function push(out: QemuMapEntry[], e: QemuMapEntry): void {
  const last = out[out.length - 1];
  const same = last && last.depth === e.depth && last.present === e.present && last.zero === e.zero && last.data === e.data && (last.offset === undefined) === (e.offset === undefined);
  if (same && (last.offset === undefined || last.offset + last.length === e.offset)) last.length += e.length;
  else out.push(e);
}

/** qemu-img's own layout of the array: one entry per line. */
export function formatQemuMapJson(entries: readonly QemuMapEntry[]): string {
  const line = (e: QemuMapEntry): string =>
    `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${e.offset === undefined ? '' : `, "offset": ${e.offset}`}}`;
  return `[${entries.map(line).join(',\n')}]\n`;
}
