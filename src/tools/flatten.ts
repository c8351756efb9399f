/**
 * Write the full view of a device into a NEW sparse raw file (commit -o, convert -O raw).
 *
 *   1. create `<out>.cownbd-part` next to the output (O_EXCL), ftruncate to `length`
 *   2. walk the device: ranges blockStatus calls zero are skipped; data is read in 4 MiB
 *      chunks and only non-zero 4 KiB blocks are written (holes elsewhere, like uml_moo's
 *      zero-sector skipping and qemu-img convert's zero detection)
 *   3. fsync, rename over `out`, fsync the directory
 *
 * An interrupt or error removes the partial file: `out` is either absent, the old file
 * (with --force) or complete, never half-written.
 */
import { open, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { BlockDevice } from '../block/block-device.js';
import { writeFully } from '../block/file-io.js';
import { syncDir } from './commit-journal.js';
import { ToolError } from './errors.js';
import type { Interrupt } from './interrupt.js';
import type { ProgressSink } from './progress.js';
import { nonZeroRuns, walk } from './stream.js';

export interface FlattenResult {
  bytesWritten: number;
  length: number;
}

export async function refuseExisting(file: string, force: boolean | undefined): Promise<void> {
  if (!force && (await stat(file).catch(() => undefined))) {
    throw new ToolError(`${file}: output file exists (use --force to overwrite)`);
  }
}

export async function flattenToRaw(
  dev: BlockDevice,
  out: string,
  length: number,
  ctx: { force?: boolean; progress: ProgressSink; interrupt: Pick<Interrupt, 'check'> },
): Promise<FlattenResult> {
  await refuseExisting(out, ctx.force);
  const part = path.join(path.dirname(path.resolve(out)), `.${path.basename(out)}.cownbd-part`);
  const fh = await open(part, 'wx').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EEXIST') throw new ToolError(`${part} exists: another run is writing ${out}, or a crashed one left it behind (delete it)`);
    throw err;
  });
  let done = false;
  try {
    await fh.truncate(length);
    const end = Math.min(length, dev.size);
    let bytesWritten = 0;
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for await (const r of walk(dev, 0, end)) {
      ctx.interrupt.check();
      if (!r.zero) {
        const view = buf.subarray(0, r.length);
        await dev.read(r.offset, view);
        for (const [s, e] of nonZeroRuns(view, 4096)) {
          await writeFully(fh, r.offset + s, view.subarray(s, e));
          bytesWritten += e - s;
        }
      }
      ctx.progress.update(r.offset + r.length);
    }
    await fh.sync();
    await fh.close();
    await rename(part, out);
    await syncDir(path.dirname(path.resolve(out)));
    done = true;
    return { bytesWritten, length };
  } finally {
    ctx.progress.finish();
    if (!done) {
      await fh.close().catch(() => {});
      await unlink(part).catch(() => {});
    }
  }
}
