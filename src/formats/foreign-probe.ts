/**
 * The I/O half of foreign-image detection: read the bytes foreign-magic.ts looks at (the
 * first FOREIGN_HEAD_BYTES and, for a regular file long enough, the last FOREIGN_TAIL_BYTES)
 * through the checked open, so a FIFO or a kernel file is refused before anything blocks.
 * Used by the registry (images and backings the operator names) and by add-cow's create
 * (an existing file adopted as the image file, which it will write).
 */
import { openChecked } from '../block/open-guard.js';
import { detectForeign, FOREIGN_FORMATS, FOREIGN_HEAD_BYTES, FOREIGN_TAIL_BYTES, type ForeignFormat } from './foreign-magic.js';

export interface FileEnds {
  readonly head: Buffer;
  /** Undefined when the file is shorter than head + tail, or reports no size (a block device). */
  readonly tail: Buffer | undefined;
  readonly size: number;
}

export async function readFileEnds(spec: string): Promise<FileEnds> {
  const fh = await openChecked(spec, { writable: false, what: 'image file', allowBlockDevice: true });
  try {
    const head = Buffer.alloc(FOREIGN_HEAD_BYTES);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    // A block device's stat size is 0: it has no tail to look at (docs/image-tool.md#foreign-images).
    const size = (await fh.stat()).size;
    let tail: Buffer | undefined;
    if (size >= FOREIGN_HEAD_BYTES + FOREIGN_TAIL_BYTES) {
      tail = Buffer.alloc(FOREIGN_TAIL_BYTES);
      const t = await fh.read(tail, 0, tail.length, size - FOREIGN_TAIL_BYTES);
      tail = tail.subarray(0, t.bytesRead);
    }
    return { head: head.subarray(0, bytesRead), tail, size };
  } finally {
    await fh.close();
  }
}

/** The foreign format of the file at `spec`, or undefined (raw, or unreadable: the caller's open reports that). */
export async function foreignFormatOf(spec: string, formats: readonly ForeignFormat[] = FOREIGN_FORMATS): Promise<ForeignFormat | undefined> {
  const ends = await readFileEnds(spec).catch(() => undefined);
  return ends && detectForeign(ends.head, ends.tail, formats);
}
