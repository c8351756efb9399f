/**
 * Rewrite an overlay header in place (rebase): one pwrite + fsync, skipped when the bytes
 * are already there. Not atomic across sectors for 4 KiB headers; the data a safe rebase
 * copied is durable before this starts, so a torn header write loses no guest data.
 */
import { open } from 'node:fs/promises';
import { readFully, writeFully } from '../block/file-io.js';

export async function rewriteHeader(file: string, bytes: Buffer, expectedSize: number): Promise<void> {
  if (bytes.length !== expectedSize) throw new Error(`internal: header size changed (${expectedSize} → ${bytes.length})`);
  const fh = await open(file, 'r+');
  try {
    const current = Buffer.alloc(bytes.length);
    await readFully(fh, 0, current);
    if (!current.equals(bytes)) {
      await writeFully(fh, 0, bytes);
      await fh.sync();
    }
  } finally {
    await fh.close();
  }
}
