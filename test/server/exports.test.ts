/**
 * Export providers in process, over real raw images: INFO/GO agreement is derived from
 * one ExportInfo, the static provider shares one device, the composite routes by name.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { CompositeExportProvider, StaticExportProvider, blockSizeConstraints, transmissionFlags } from '../../src/server/exports.js';
import { silentLogger } from '../../src/logging.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';

describe('export providers', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const a = createRawImage(tmp.file('a.raw'), 1 << 20);
  const b = createRawImage(tmp.file('b.raw'), 2 << 20);
  const ctx = { connId: 1, peer: 'test' };

  it('static: describe() and open() agree and every open() shares one device', async () => {
    const p = new StaticExportProvider([{ name: 'a', path: a, description: 'A' }], silentLogger());
    const info = (await p.describe('a'))!;
    const h1 = (await p.open('a', ctx))!;
    const h2 = (await p.open('a', { connId: 2, peer: 'x' }))!;
    expect(h1.device).toBe(h2.device);
    expect(transmissionFlags(info, true)).toBe(transmissionFlags(h1, true));
    expect(transmissionFlags(info, false) & 0x80).toBe(0); // SEND_DF only with structured replies
    expect(transmissionFlags(info, true) & 0x80).toBe(0x80);
    expect(blockSizeConstraints(info)).toEqual([1, 4096, 32 << 20]);
    expect(await p.describe('nope')).toBeUndefined();
    await h1.release();
    await p.close();
    await expect(h1.device.read(0, Buffer.alloc(1))).rejects.toMatchObject({ code: 'ESHUTDOWN' });
  });

  it('read-only exports advertise READ_ONLY and no TRIM/WRITE_ZEROES', async () => {
    const p = new StaticExportProvider([{ name: '', path: a, readOnly: true }], silentLogger());
    const f = transmissionFlags((await p.describe(''))!, false);
    expect(f & 0x02).toBe(0x02);
    expect(f & (0x20 | 0x40 | 0x800)).toBe(0);
    await p.close();
  });

  it('composite: lists both, routes lookups, closes all', async () => {
    const p1 = new StaticExportProvider([{ name: 'a', path: a }], silentLogger());
    const p2 = new StaticExportProvider([{ name: 'b', path: b }, { name: 'a', path: b }], silentLogger());
    const c = new CompositeExportProvider([p1, p2]);
    expect((await c.list()).map((e) => e.name)).toEqual(['a', 'b']);
    expect((await c.describe('a'))!.size).toBe(1 << 20);
    expect((await c.open('b', ctx))!.size).toBe(2 << 20);
    await c.close();
  });
});
