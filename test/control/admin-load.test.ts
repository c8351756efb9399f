/**
 * Admin work must not stall or break the data path, black-box against the real server
 * with real libnbd clients:
 *
 * - With many per-machine overlays, hammering GET /metrics and polling GET /exports (what
 *   the status page does) keeps the p99 of NBD reads within a bound of its idle value,
 *   and allocation is measured in the background (cownbd_allocation_measurements_total),
 *   not once per request.
 * - Under connect/disconnect churn, /metrics scrapes and allocation maps never answer
 *   500: a device is never walked after its client closed it (it was EBADF `seekHole
 *   lseek` → 500).
 */
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { afterAll, describe, expect, it } from 'vitest';
import { serverLog } from '../helpers/clients.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { nbdPython, requireNbdPython, runNbdPython, startServer } from '../helpers/server.js';
import { api, waitFor } from './control-helpers.js';

const usable = requireNbdPython();
const MiB = 1 << 20;

/** Reads 4 KiB at random offsets for SECONDS; prints {"n", "p50", "p99", "max"} in ms. */
const READER = `
import nbd, json, random, time
h = nbd.NBD(); h.connect_uri(URI)
size = h.get_size(); lat = []
end = time.monotonic() + SECONDS
while time.monotonic() < end:
    off = random.randrange(0, size // 4096) * 4096
    t = time.monotonic(); h.pread(4096, off); lat.append((time.monotonic() - t) * 1000)
    time.sleep(0.002)
lat.sort()
print(json.dumps({"n": len(lat), "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)], "max": lat[-1]}))
`;

/** A sparse golden image: 200 data runs, so walking its allocation takes many extents. */
function sparseGolden(file: string, size: number): void {
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < 200; i++) runs.push([Math.floor((i * size) / 200 / 4096) * 4096, 4096]);
  createRawImage(file, size, runs, 3);
}

function gauge(text: string, name: string): number {
  const f = parsePrometheusTextFormat(text).find((x) => x.name === name);
  return Number(f?.metrics[0]?.value ?? NaN);
}

describe.runIf(usable)('admin API under load', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('hammering /metrics and polling every export keeps NBD reads fast; allocation is measured in the background', async () => {
    const N = 100;
    sparseGolden(tmp.file('golden.img'), 64 * MiB);
    const sock = tmp.file('load.sock');
    const srv = await startServer(['--base', tmp.file('golden.img'), '--overlay-dir', tmp.file('vms'), '--admin', `unix:${sock}`]);
    const A = { socketPath: sock };
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      // N machines, each wrote 4 KiB at its own place, then left (their overlays stay on disk).
      await nbdPython(`
import nbd
for i, uri in enumerate(URIS):
    h = nbd.NBD(); h.connect_uri(uri); h.pwrite(b"w" * 4096, i * 65536); h.flush(); h.shutdown()
`, { URIS: Array.from({ length: N }, (_, i) => srv.uri(`vm${i}`)) }, 120_000);

      // Not per request: 30 listings of N exports in a row, 30·N walks if it were.
      const walks0 = gauge((await api(A, 'GET', '/metrics')).text, 'cownbd_allocation_measurements_total');
      for (let i = 0; i < 30; i++) {
        const r = await api(A, 'GET', '/exports');
        expect(r.status).toBe(200);
        expect(r.body.exports).toHaveLength(N);
      }
      const walks1 = gauge((await api(A, 'GET', '/metrics')).text, 'cownbd_allocation_measurements_total');
      expect(walks1 - walks0).toBeLessThanOrEqual(3 * N);

      const reader = (seconds: number) => runNbdPython(READER, { URI: srv.uri('vm0'), SECONDS: seconds }, 60_000);
      const idle = JSON.parse((await reader(4)).stdout) as { n: number; p99: number; max: number };

      // Hammer: 8 loops of /metrics, 4 of /exports, 4 walking every export's allocation
      // map (the status page's picture), for as long as the second reader runs.
      let done = false;
      const statuses = new Map<number, number>();
      const loop = async (next: () => string) => {
        while (!done) {
          const r = await api(A, 'GET', next());
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        }
      };
      let k = 0;
      const busyRun = reader(4).finally(() => (done = true));
      await Promise.all([
        ...Array.from({ length: 8 }, () => loop(() => '/metrics')),
        ...Array.from({ length: 4 }, () => loop(() => '/exports')),
        ...Array.from({ length: 4 }, () => loop(() => `/exports/vm${k++ % N}/allocation?buckets=256`)),
        busyRun,
      ]);
      const busy = JSON.parse((await busyRun).stdout) as { n: number; p99: number; max: number };
      console.log(`NBD 4 KiB reads, ${N} overlays: idle p99 ${idle.p99.toFixed(1)} ms (max ${idle.max.toFixed(1)}, n=${idle.n}); ` +
        `while hammered p99 ${busy.p99.toFixed(1)} ms (max ${busy.max.toFixed(1)}, n=${busy.n}); admin answers ${JSON.stringify(Object.fromEntries(statuses))}`);
      expect(statuses.get(500)).toBeUndefined();
      // The API still answers (how many within the rate limit depends on the machine's load).
      expect(statuses.get(200)).toBeGreaterThan(10);
      // Measured on the shared 2-core VM (load average 13-18): idle p99 3-21 ms; hammered 28-99 ms with this
      // change, 465 ms before it (when every request walked every overlay). The bound
      // leaves room for the machine's own noise.
      expect(busy.p99).toBeLessThan(Math.max(200, 5 * idle.p99));
      expect(busy.n).toBeGreaterThan(idle.n / 4); // reads kept flowing (before: 91 vs 940)
    } finally {
      await srv.stop();
    }
  });

  it('/metrics and allocation maps never answer 500 while clients connect and disconnect', async () => {
    sparseGolden(tmp.file('churn-golden.img'), 64 * MiB);
    const sock = tmp.file('churn.sock');
    const A = { socketPath: sock };
    const srv = await startServer(['--base', tmp.file('churn-golden.img'), '--overlay-dir', tmp.file('churn'), '--admin', `unix:${sock}`]);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      // 3 clients, for 8 s each: connect to a new machine, write, leave at once.
      const churners = [0, 1, 2].map((c) =>
        runNbdPython(`
import nbd, time
end = time.monotonic() + 8; i = 0
while time.monotonic() < end:
    h = nbd.NBD(); h.connect_uri(PREFIX + str(i)); h.pwrite(b"c" * 4096, 0); h.shutdown(); i += 1
print(i)
`, { PREFIX: srv.uri(`c${c}-`) }, 120_000),
      );
      let done = false;
      void Promise.all(churners).finally(() => (done = true));
      const count = (m: Map<number, number>, status: number) => m.set(status, (m.get(status) ?? 0) + 1);
      const scrapes = new Map<number, number>();
      const maps = new Map<number, number>();
      const failures: string[] = [];
      await Promise.all([
        (async () => {
          while (!done) {
            const r = await api(A, 'GET', '/metrics');
            count(scrapes, r.status);
            if (r.status >= 500) failures.push(`/metrics: ${r.text.slice(0, 200)}`);
            await new Promise((r) => setTimeout(r, 500)); // within the scrape rate limit (2/s)
          }
        })(),
        // The status page's maps, for whoever is connected right now.
        (async () => {
          while (!done) {
            const conns = (await api(A, 'GET', '/connections')).body.connections as Array<{ export: string }>;
            for (const c of conns) {
              const r = await api(A, 'GET', `/exports/${c.export}/allocation?buckets=16`);
              count(maps, r.status);
              if (r.status >= 500) failures.push(`allocation ${c.export}: ${r.text.slice(0, 200)}`);
            }
            await new Promise((r) => setTimeout(r, 5));
          }
        })(),
      ]);
      const made = (await Promise.all(churners)).map((c) => {
        expect(c.status, c.stderr).toBe(0);
        return Number(c.stdout);
      });
      console.log(`under churn (${made.join('+')} connections): scrapes ${JSON.stringify(Object.fromEntries(scrapes))}, maps ${JSON.stringify(Object.fromEntries(maps))}`);
      expect(failures).toEqual([]);
      expect(scrapes.get(200)).toBeGreaterThanOrEqual(4);
      expect(maps.get(200)).toBeGreaterThanOrEqual(8);
      expect(serverLog(srv).filter((l) => l.msg === 'admin API request failed')).toEqual([]);
    } finally {
      await srv.stop();
    }
  });
});
