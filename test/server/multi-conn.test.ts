/**
 * All connections to an export share one device: a write flushed on one connection is
 * visible on another (what CAN_MULTI_CONN promises), and the image is opened once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { PRELUDE, lastJson } from './py-prelude.js';

const MiB = 1024 * 1024;
const hasNbd = requireNbdPython();

describe.runIf(hasNbd)('multiple connections to one export', () => {
  const tmp = makeTempDir();
  let srv: RunningServer;

  beforeAll(async () => {
    srv = await startServer([createRawImage(tmp.file('m.raw'), 4 * MiB), '--log-level', 'debug']);
  });
  afterAll(async () => {
    expect(await srv?.stop()).toBe(0);
    tmp.cleanup();
  });

  it('a write flushed on connection A is read back by connection B', async () => {
    const r = lastJson(
      await nbdPython(
        PRELUDE +
          `
a = conn()
b = conn()
mc = [a.can_multi_conn(), b.can_multi_conn()]
before = b.pread(4096, 65536)
a.pwrite(b'A' * 4096, 65536)
a.flush()
seen_b = b.pread(4096, 65536)
b.pwrite(b'B' * 512, 65536 + 100, nbd.CMD_FLAG_FUA)
seen_a = a.pread(4096, 65536)
out({"mc": mc, "before": before == bytes(4096), "b": seen_b == b'A' * 4096,
     "a": seen_a == b'A' * 100 + b'B' * 512 + b'A' * (4096 - 612)})
`,
        { URI: srv.uri() },
      ),
    );
    expect(r).toEqual({ mc: [true, true], before: true, b: true, a: true });
    // One shared device: the image was opened exactly once.
    expect(srv.stderr().match(/export image opened|opening export image/g)).toHaveLength(1);
  });
});
