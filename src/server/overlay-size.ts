/**
 * The size an existing overlay file advertises, read from its own header — never from the
 * base the server was started with. An overlay over an s3:// base is pinned to the version
 * it was made over; after a bigger version is published and the server restarts, the
 * server's base is the newer, bigger version, while the overlay (and its device) keep the
 * old size (docs/object-store.md, "Overlays over an s3:// base: pinning").
 *
 * Only the header is read (no backing opened): INFO before GO must stay cheap and must not
 * create or lock anything. Overlays made on demand are cow files (overlay-providers.ts).
 */
import { open } from 'node:fs/promises';
import { COW_MAX_HEADER_SIZE, COW_SECTOR_SIZE, decodeCowHeader, detectCowLayout } from '../formats/cow/cow-header.js';

/** Virtual size of the cow overlay `file`, or undefined when it does not exist or is unreadable. */
export async function overlayFileSize(file: string): Promise<number | undefined> {
  const fh = await open(file, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const head = Buffer.alloc(COW_MAX_HEADER_SIZE);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const h = decodeCowHeader(head.subarray(0, bytesRead), detectCowLayout(head.subarray(0, bytesRead))[0]!);
    return Math.ceil(h.size / COW_SECTOR_SIZE) * COW_SECTOR_SIZE;
  } catch {
    return undefined; // the open that follows reports what is wrong with the file
  } finally {
    await fh.close();
  }
}
