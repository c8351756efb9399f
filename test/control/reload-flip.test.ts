/**
 * Reloads against a symlink that another process keeps flipping between a regular image
 * and /proc/self/environ (issue 26, item 9): the server must never end up serving an export
 * opened on procfs (that would be the server's own environment). Each SIGHUP adds one
 * export whose path is the flipping link, so every reload really opens it; afterwards every
 * export that exists must be the 1 MiB image, and some reloads must have been refused (so
 * the race was really run). Real CLI, real reloads, real nbdinfo.
 */
import { symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { nbdinfoJson, serverLog } from '../helpers/clients.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { flipSymlink } from '../helpers/symlink-flipper.js';

const MiB = 1024 * 1024;
/*
 * Measured with the old check (statfs of the name after the open): 3 of 120 reloads served
 * /proc/self/environ (65 were refused); 40 reloads were not enough to catch it reliably.
 */
const RELOADS = 120;

describe.runIf(requireTool('nbdinfo') && requireTool('python3'))('reloads racing a symlink flipped to /proc/self/environ', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it(`no export opened by ${RELOADS} reloads is on procfs`, async () => {
    createRawImage(tmp.file('plain.raw'), MiB);
    const link = tmp.file('flip.raw');
    symlinkSync('plain.raw', link);
    const config = tmp.file('exports.toml');
    const toml = (n: number) => Array.from({ length: n }, (_, i) => `[[export]]\nname = "e${i}"\npath = "${link}"\nformat = "raw"\nread-only = true\n`).join('\n');
    writeFileSync(config, toml(1));
    const srv = await startServer(['--config', config]);
    const flipper = flipSymlink(link, path.join(tmp.path, 'plain.raw'), '/proc/self/environ', false);
    const outcomes = () => serverLog(srv).filter((l) => l.msg === 'configuration reloaded' || l.msg === 'reload failed: configuration unchanged');
    try {
      for (let i = 1; i <= RELOADS; i++) {
        writeFileSync(config, toml(i + 1));
        const before = outcomes().length;
        srv.proc.kill('SIGHUP');
        await expect.poll(() => outcomes().length, { timeout: 10_000, interval: 20 }).toBe(before + 1);
      }
    } finally {
      flipper.kill('SIGKILL');
    }
    try {
      const refused = serverLog(srv).filter((l) => l.msg === 'reload failed: configuration unchanged');
      for (const r of refused) expect(String(r.reason)).toMatch(/procfs/);
      const doc = await nbdinfoJson(srv.uri(), ['--list']);
      const sizes = doc.exports.map((e) => e['export-size']);
      expect(sizes.length).toBeGreaterThan(1); // some reloads opened the image
      expect(refused.length).toBeGreaterThan(0); // and some met /proc/self/environ
      expect(sizes.filter((s) => s !== MiB)).toEqual([]);
    } finally {
      await srv.stop();
    }
  });
});
