/// <reference lib="dom" />
/**
 * GET / (the status page) in a real headless browser (Debian's chromium driven by
 * playwright-core): it loads without console errors over a TCP admin endpoint with the
 * token in the URL fragment, refreshes by itself, lists the connection, and its picture
 * shows the overlay a client just wrote to as allocated exactly where it wrote; the strip
 * has a legend, the header names version, listener and uptime, each export keeps a rate
 * history, chains wrap only between layers, and an 800 px window does not overflow.
 * COWNBD_SCREENSHOT=path saves a screenshot (how docs/status-page.png is made).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { REPO_ROOT, requireNbdPython, runNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from './control-helpers.js';

const usable = requireTool('chromium') && requireNbdPython();
const MiB = 1 << 20;

describe.runIf(usable)('status page', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('shows exports, connections and where the overlay was written, without console errors', async () => {
    createPatternedImage(tmp.file('golden.img'), 16 * MiB, 2);
    const tokenFile = tmp.file('token');
    const token = 'status-page-test-token-0123456789';
    writeFileSync(tokenFile, token);
    const srv = await startServer(['--base', tmp.file('golden.img'), '--overlay-dir', tmp.file('vms'), '--admin', '127.0.0.1:0', '--admin-token-file', tokenFile]);
    const ready = tmp.file('ready');
    const stop = tmp.file('stop');
    // vm1: 1 MiB written at 12 MiB (slices 192-207 of 256), then stays connected.
    const holder = runNbdPython(`
import nbd, os, time
h = nbd.NBD(); h.connect_uri(URI)
h.pwrite(b"w" * (1 << 20), 12 << 20); h.flush()
open(READY, "w").close()
while not os.path.exists(STOP): h.pread(4096, 0); time.sleep(0.05)
`, { URI: srv.uri('vm1'), READY: ready, STOP: stop });
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      await waitFor(() => existsSync(ready) && srv.stdout().includes('admin API on'), 'the client and the admin API');
      const port = Number(/admin API on http:\/\/127\.0\.0\.1:(\d+)/.exec(srv.stdout())![1]);
      const page = await browser.newPage({ viewport: { width: 1400, height: 420 } });
      const problems: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
      await page.goto(`http://127.0.0.1:${port}/#token=${token}`);
      const map = page.locator('canvas.map[data-export="vm1"]');
      await map.waitFor();
      await page.waitForFunction(() => document.querySelector('canvas.map[data-export="vm1"]')?.getAttribute('data-allocated'));
      const allocated = (await map.getAttribute('data-allocated'))!.split(',').map(Number);
      expect(allocated).toEqual(Array.from({ length: 16 }, (_, i) => 192 + i));
      // The picture itself: blue where written (slice 200), white elsewhere (slice 10).
      const pixels = await map.evaluate((c: HTMLCanvasElement) => {
        const row = c.getContext('2d')!.getImageData(0, 7, c.width, 1).data; // one readback
        const at = (slice: number) => Array.from(row.slice((slice * 2 + 1) * 4, (slice * 2 + 1) * 4 + 4));
        return { written: at(200), untouched: at(10) };
      });
      expect(pixels.untouched).toEqual([255, 255, 255, 255]);
      expect(pixels.written[2]).toBe(255);
      expect(pixels.written[0]).toBeLessThan(100);
      // The connection is listed, and the page refreshes by itself.
      await expect.poll(async () => page.locator('#connections tbody tr').count(), { timeout: 10_000 }).toBe(1);
      expect(await page.locator('#connections tbody tr td').nth(1).textContent()).toBe('vm1');
      const chain = await page.locator('#exports tr[data-export="vm1"] td.chain').textContent();
      expect(chain).toContain('cow vm1.cow = 1.0 MiB');
      // Each layer is one unbreakable piece: the chain wraps between layers, never mid-number.
      const layers = page.locator('#exports tr[data-export="vm1"] td.chain span.layer');
      expect(await layers.count()).toBe(2);
      expect(await layers.first().evaluate((el) => getComputedStyle(el).whiteSpace)).toBe('nowrap');
      await page.waitForFunction(() => Number(document.body.dataset.refreshes) >= 2, undefined, { timeout: 10_000 });
      // The allocation strip has a legend; the header names the server (version, listener, uptime).
      expect(await page.locator('#legend').textContent()).toMatch(/nothing written to the top overlay.*partly.*fully written/s);
      const version = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
      await expect.poll(async () => page.locator('#server').textContent(), { timeout: 10_000 }).toMatch(
        new RegExp(`^cownbd ${version.replace(/\./g, '\\.')} · listening on 127\\.0\\.0\\.1:${srv.port} · up \\d+ min \\d+ s$`),
      );
      // A throughput history per export fills as the page refreshes (vm1 keeps reading).
      await page.waitForFunction(() => Number(document.querySelector('canvas.history[data-export="vm1"]')?.getAttribute('data-samples')) >= 2, undefined, { timeout: 10_000 });
      // At 800 px the page does not overflow: wide tables scroll inside their own box.
      await page.setViewportSize({ width: 800, height: 600 });
      await page.waitForFunction(() => Number(document.body.dataset.refreshes) >= 4, undefined, { timeout: 10_000 });
      expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(800);
      await page.setViewportSize({ width: 1400, height: 420 });
      if (process.env.COWNBD_SCREENSHOT) await page.screenshot({ path: process.env.COWNBD_SCREENSHOT, fullPage: true });
      expect(problems, problems.join("\n")).toEqual([]);
      // Without the token the API refuses (the page alone carries no data).
      const bare = await browser.newPage();
      const errors: string[] = [];
      bare.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
      await bare.goto(`http://127.0.0.1:${port}/`);
      await expect.poll(async () => bare.locator('#error').textContent(), { timeout: 10_000 }).toContain('401');
    } finally {
      writeFileSync(stop, '');
      await browser.close();
      await holder;
      await srv.stop();
    }
  });
});
