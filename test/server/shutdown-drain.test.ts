/**
 * stop() with a request in flight, in process (real sockets, real raw image): the
 * running READ completes and is answered, a request arriving meanwhile gets ESHUTDOWN,
 * then the connection closes and the device is flushed and closed.
 *
 * The only test double is a gate in front of the real device's read(), so the READ is
 * provably still running when stop() is called.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { NbdServer } from '../../src/server/listener.js';
import { StaticExportProvider } from '../../src/server/exports.js';
import { openImage } from '../../src/formats/open-image.js';
import { silentLogger } from '../../src/logging.js';
import type { BlockDevice } from '../../src/block/block-device.js';
import { createRawImage, makeTempDir, pattern } from '../helpers/images.js';
import { CMD, ERR, RawClient, request } from '../helpers/nbd-fixtures.js';

describe('NbdServer.stop()', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('drains running requests, answers new ones ESHUTDOWN, then flushes and closes the device', async () => {
    const image = createRawImage(tmp.file('d.raw'), 1 << 20, [[0, 1 << 20]], 5);
    let openGate!: () => void;
    const gate = new Promise<void>((r) => (openGate = r));
    let readStarted!: () => void;
    const started = new Promise<void>((r) => (readStarted = r));
    const calls: string[] = [];
    const provider = new StaticExportProvider([{ name: '', path: image }], silentLogger(), async (c) => {
      const dev = await openImage(c.path);
      const realRead = dev.read.bind(dev);
      const realFlush = dev.flush.bind(dev);
      const realClose = dev.close.bind(dev);
      return Object.assign(dev, {
        read: async (offset: number, target: Buffer) => {
          readStarted();
          await gate;
          return realRead(offset, target);
        },
        flush: async () => {
          calls.push('flush');
          return realFlush();
        },
        close: async () => {
          calls.push('close');
          return realClose();
        },
      }) as BlockDevice;
    });
    const server = new NbdServer({ provider, log: silentLogger() });
    const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
    const c = await RawClient.connect({ port: port! });
    await c.handshake();
    c.write(request(CMD.READ, { cookie: 1n, offset: 0, length: 4096 }));
    await started;
    const stopped = server.stop();
    c.write(request(CMD.WRITE, { cookie: 2n, offset: 0, payload: Buffer.alloc(512, 0xab) }));
    const w = await c.readSimpleReply();
    expect(w).toMatchObject({ error: ERR.ESHUTDOWN, cookie: 2n });
    openGate();
    const r = await c.readSimpleReply(4096);
    expect(r.cookie).toBe(1n);
    expect(r.data.equals(pattern(0, 4096, 5))).toBe(true);
    expect(await c.closedByServer()).toBe(true);
    await stopped;
    expect(calls).toEqual(['flush', 'close']);
    // A new connection is refused once stopped.
    await expect(RawClient.connect({ port: port! })).rejects.toThrow();
  });
});
