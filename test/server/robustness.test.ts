/**
 * Misbehaving clients: garbage bytes, bad request magic, unknown commands, oversized
 * payloads, abrupt disconnects mid-request — each affects only its own connection,
 * while a well-behaved libnbd client keeps working and the server never dies.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import { createRawImage, makeTempDir, pattern } from '../helpers/images.js';
import { nbdPython, requireNbdPython, runNbdPython, startServer, type RunningServer } from '../helpers/server.js';
import { CMD, ERR, RawClient, request } from '../helpers/nbd-fixtures.js';
import { PRELUDE, lastJson } from './py-prelude.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const hasNbd = requireNbdPython();

describe('robustness against bad clients', () => {
  const tmp = makeTempDir();
  let srv: RunningServer;

  beforeAll(async () => {
    // 64 MiB (so a 33 MiB WRITE is in range), patterned in the first SIZE bytes.
    const img = createRawImage(tmp.file('r.raw'), 64 * MiB, [[0, SIZE]], 3);
    srv = await startServer([img, '--log-level', 'debug']);
  });
  afterAll(async () => {
    expect(await srv?.stop()).toBe(0);
    tmp.cleanup();
  });

  it('replies EINVAL to an unknown command (simple and structured) and stays connected', async () => {
    for (const structured of [false, true]) {
      const c = await RawClient.connect({ port: srv.port! });
      try {
        await c.handshake({ structured });
        c.write(request(42, { cookie: 5n, offset: 0, length: 512 }));
        const r = await c.readAnyReplyError();
        expect(r).toEqual({ error: ERR.EINVAL, cookie: 5n });
        c.write(request(CMD.READ, { cookie: 6n, offset: 8, length: 8 }));
        if (structured) {
          const chunks = await c.readChunks();
          expect(chunks).toHaveLength(1);
          expect(chunks[0]!.payload.subarray(8)).toEqual(pattern(8, 8, 3));
        } else {
          expect((await c.readSimpleReply(8)).data).toEqual(pattern(8, 8, 3));
        }
      } finally {
        c.close();
      }
    }
  });

  it('answers pipelined requests (possibly out of order) with matching cookies', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    try {
      await c.handshake();
      const n = 200;
      const batch: Buffer[] = [];
      for (let i = 0; i < n; i++) batch.push(request(CMD.READ, { cookie: BigInt(i + 1000), offset: i * 4096, length: 4096 }));
      c.write(Buffer.concat(batch)); // far more than the in-flight limit: backpressure path
      const seen = new Set<bigint>();
      for (let i = 0; i < n; i++) {
        const r = await c.readSimpleReply(4096);
        expect(r.error).toBe(0);
        const idx = Number(r.cookie) - 1000;
        expect(r.data.equals(pattern(idx * 4096, 4096, 3))).toBe(true);
        seen.add(r.cookie);
      }
      expect(seen.size).toBe(n);
    } finally {
      c.close();
    }
  });

  it('drains an oversized (33 MiB) WRITE payload, replies EINVAL and keeps the stream in sync', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    try {
      await c.handshake();
      c.write(request(CMD.WRITE, { cookie: 9n, offset: 0, length: 33 * MiB }));
      c.write(Buffer.alloc(33 * MiB, 0xee));
      c.write(request(CMD.READ, { cookie: 10n, offset: 0, length: 16 }));
      const w = await c.readSimpleReply();
      expect(w).toMatchObject({ error: ERR.EINVAL, cookie: 9n });
      const r = await c.readSimpleReply(16);
      expect(r.cookie).toBe(10n);
      expect(r.data).toEqual(pattern(0, 16, 3));
    } finally {
      c.close();
    }
  });

  it('still answers requests sent just before the client half-closes its side', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    try {
      await c.handshake();
      const batch: Buffer[] = [];
      for (let i = 0; i < 20; i++) batch.push(request(CMD.READ, { cookie: BigInt(i), offset: i * 512, length: 512 }));
      c.socket.end(Buffer.concat(batch));
      for (let i = 0; i < 20; i++) expect((await c.readSimpleReply(512)).error).toBe(0);
      expect(await c.closedByServer()).toBe(true);
    } finally {
      c.close();
    }
  });

  it('closes only the offending connection on a bad request magic', async () => {
    const c = await RawClient.connect({ port: srv.port! });
    await c.handshake();
    const bad = request(CMD.READ, { length: 512 });
    bad.writeUInt32BE(0xdeadbeef, 0);
    c.write(bad);
    expect(await c.closedByServer()).toBe(true);
    expect(srv.stderr()).toMatch(/bad request magic 0xdeadbeef/);
  });

  it.runIf(hasNbd)('keeps serving a libnbd client while others send garbage and vanish mid-request', async () => {
    const worker = runNbdPython(
      PRELUDE +
        `
import time, os
h = conn()
end = time.time() + 3
n = 0
while time.time() < end:
    off = (n * 65536) % (${SIZE} - 65536)
    data = os.urandom(4096)
    h.pwrite(data, off)
    assert h.pread(4096, off) == data
    n += 1
h.flush()
h.shutdown()
out({"n": n})
`,
      { URI: srv.uri() },
    );
    const abuse = async (i: number) => {
      const s = net.connect(srv.port!, '127.0.0.1');
      s.on('error', () => undefined);
      await new Promise((r) => s.once('connect', r));
      if (i % 4 === 0) s.write(Buffer.alloc(1000, i)); // garbage instead of client flags
      else if (i % 4 === 1) {
        // Valid handshake, then half a WRITE and a hard close.
        const c = await RawClient.connect({ port: srv.port! });
        await c.handshake();
        c.write(request(CMD.WRITE, { offset: 0, length: 65536 }));
        c.write(Buffer.alloc(1000));
        c.socket.destroy();
      } else if (i % 4 === 2) s.write(Buffer.from('NBDMAGIC')); // truncated options
      s.destroy();
    };
    for (let i = 0; i < 40; i++) await abuse(i);
    const r = await worker;
    expect(r.status, r.stderr).toBe(0);
    expect(lastJson(r.stdout).n).toBeGreaterThan(10);
    // And a fresh client still works.
    const after = lastJson(await nbdPython(PRELUDE + 'h = conn()\nout({"size": h.get_size()})', { URI: srv.uri() }));
    expect(after.size).toBe(64 * MiB);
    expect(srv.proc.exitCode).toBeNull();
  });
});
