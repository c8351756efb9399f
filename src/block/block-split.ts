/**
 * Splitting byte ranges at block boundaries, written once for every format
 * (nbdkit cow.c's "unaligned head / aligned body / unaligned tail").
 */

export interface Segment {
  /** Byte offset of the segment on the device. */
  readonly offset: number;
  readonly length: number;
  /** Offset of this segment relative to the start of the request. */
  readonly bufferOffset: number;
}

export interface BlockSplit {
  /** Part of the first block, when the request does not start on a boundary (or ends inside it). */
  readonly head?: Segment;
  /** Whole blocks. */
  readonly body?: Segment;
  /** Part of the last block, when the request does not end on a boundary. */
  readonly tail?: Segment;
}

/** Split [offset, offset+length) into head/body/tail around `blockSize` boundaries. */
export function splitByBlock(offset: number, length: number, blockSize: number): BlockSplit {
  const end = offset + length;
  if (length <= 0) return {};
  const firstBoundary = Math.ceil(offset / blockSize) * blockSize;
  const lastBoundary = Math.floor(end / blockSize) * blockSize;
  if (firstBoundary >= lastBoundary) {
    // Entirely inside one block (or exactly one partial block on each side of a boundary).
    if (offset % blockSize === 0 && end % blockSize === 0) {
      return { body: { offset, length, bufferOffset: 0 } };
    }
    if (firstBoundary === lastBoundary && firstBoundary > offset && firstBoundary < end) {
      return {
        head: { offset, length: firstBoundary - offset, bufferOffset: 0 },
        tail: { offset: firstBoundary, length: end - firstBoundary, bufferOffset: firstBoundary - offset },
      };
    }
    return { head: { offset, length, bufferOffset: 0 } };
  }
  const split: { head?: Segment; body?: Segment; tail?: Segment } = {};
  if (firstBoundary > offset) split.head = { offset, length: firstBoundary - offset, bufferOffset: 0 };
  split.body = { offset: firstBoundary, length: lastBoundary - firstBoundary, bufferOffset: firstBoundary - offset };
  if (end > lastBoundary) split.tail = { offset: lastBoundary, length: end - lastBoundary, bufferOffset: lastBoundary - offset };
  return split;
}

/** Round down / up to a multiple of `align` (any positive integer, not only powers of two). */
export const alignDown = (value: number, align: number): number => Math.floor(value / align) * align;
export const alignUp = (value: number, align: number): number => Math.ceil(value / align) * align;
