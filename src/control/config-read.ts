/**
 * Reading the config file without ever blocking the process on it.
 *
 * A plain readFile() of a FIFO blocks a threadpool thread in open() until some writer
 * appears, possibly forever: the reload never finishes, and even exit hangs (Node joins
 * its threadpool on the way out), so SIGTERM could not stop the server. A character
 * device (/dev/zero) never ends, and a huge file stalls the event loop while it is parsed.
 * So the file is opened with O_NONBLOCK (an open that returns at once for FIFOs; no effect
 * on regular files) and O_NOCTTY, fstat'ed, and refused unless it is a regular file of at
 * most MAX_CONFIG_BYTES; then exactly that many bytes are read.
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';

/** Far more than a config with thousands of exports needs; parsing it stays well under a second. */
export const MAX_CONFIG_BYTES = 4 << 20;

/** What a non-regular file is, for the refusal message. */
function kindOf(s: { isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSocket(): boolean; isDirectory(): boolean }): string {
  if (s.isFIFO()) return 'a FIFO (named pipe)';
  if (s.isCharacterDevice()) return 'a character device';
  if (s.isBlockDevice()) return 'a block device';
  if (s.isSocket()) return 'a socket';
  if (s.isDirectory()) return 'a directory';
  return 'not a regular file';
}

/**
 * The file's text; throws an Error naming the reason. `what` names the file's role in
 * the messages (the admin token file is read the same way).
 */
export async function readConfigText(file: string, maxBytes = MAX_CONFIG_BYTES, what = 'a config file'): Promise<string> {
  const fh = await open(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`${kindOf(st)}, not a regular file: refused`);
    if (st.size > maxBytes) throw new Error(`${st.size} bytes is larger than the ${maxBytes}-byte limit for ${what}: refused`);
    // Read to the end, at most maxBytes + 1: a file growing while we read is refused, not
    // read without end.
    const buf = Buffer.alloc(maxBytes + 1);
    let got = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
      if (got > maxBytes) throw new Error(`grew past the ${maxBytes}-byte limit for ${what} while being read: refused`);
    }
    return buf.toString('utf8', 0, got);
  } finally {
    await fh.close();
  }
}
