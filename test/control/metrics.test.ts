/**
 * GET /metrics scraped from the real server and parsed with a Prometheus text parser:
 * counters, bytes, the latency histogram and errors move exactly with the traffic a real
 * client sent; gauges show connections and bytes per layer; Node's default metrics exist.
 */
import { existsSync } from 'node:fs';
import parsePrometheusTextFormat, { type PromFamily } from 'parse-prometheus-text-format';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { requireNbdPython, runNbdPython, startServer } from '../helpers/server.js';
import { api, waitFor } from './control-helpers.js';

const usable = requireNbdPython();

function sample(families: PromFamily[], name: string, labels: Record<string, string>): number | undefined {
  const f = families.find((x) => x.name === name);
  const m = f?.metrics.find((s) => Object.entries(labels).every(([k, v]) => s.labels?.[k] === v));
  return m?.value === undefined ? (m?.count === undefined ? undefined : Number(m.count)) : Number(m.value);
}

describe.runIf(usable)('GET /metrics', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('moves with the traffic', async () => {
    createPatternedImage(tmp.file('golden.img'), 8 << 20, 5);
    const sock = tmp.file('admin.sock');
    const srv = await startServer(['--base', tmp.file('golden.img'), '--overlay-dir', tmp.file('vms'), '--admin', `unix:${sock}`]);
    const A = { socketPath: sock };
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const before = parsePrometheusTextFormat((await api(A, 'GET', '/metrics')).text);
      expect(sample(before, 'cownbd_requests_total', { export: 'vm1', command: 'write' })).toBeUndefined();
      expect(before.find((f) => f.name === 'cownbd_process_cpu_user_seconds_total')?.type).toBe('COUNTER');
      expect(before.find((f) => f.name === 'cownbd_nodejs_heap_size_used_bytes')?.type).toBe('GAUGE');

      // 10 writes of 64 KiB, 5 reads of 4 KiB, a flush, one read past the end (EINVAL); then stay connected.
      const ready = tmp.file('ready');
      const stop = tmp.file('stop');
      const client = runNbdPython(`
import nbd, os, time
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(URI)
for i in range(10): h.pwrite(b"m" * 65536, i * 65536)
for i in range(5): h.pread(4096, i * 4096)
h.flush()
try:
    h.pread(4096, h.get_size())
except nbd.Error:
    pass
open(READY, "w").close()
while not os.path.exists(STOP): time.sleep(0.02)
`, { URI: srv.uri('vm1'), READY: ready, STOP: stop });
      await waitFor(() => existsSync(ready), 'the client');
      // A request is counted when its reply is queued, which can be a turn after the client
      // already read it: scrape until the last request (the EINVAL read) is in (at /metrics's 2/s rate limit).
      let res = await api(A, 'GET', '/metrics');
      for (let i = 0; i < 10 && sample(parsePrometheusTextFormat(res.text), 'cownbd_request_errors_total', { export: 'vm1', command: 'read', errno: 'EINVAL' }) !== 1; i++) {
        await new Promise((r) => setTimeout(r, 600));
        res = await api(A, 'GET', '/metrics');
      }
      expect(res.status).toBe(200);
      const m = parsePrometheusTextFormat(res.text);
      const vm1 = { export: 'vm1' };
      expect(sample(m, 'cownbd_requests_total', { ...vm1, command: 'write' })).toBe(10);
      expect(sample(m, 'cownbd_requests_total', { ...vm1, command: 'read' })).toBe(6);
      expect(sample(m, 'cownbd_requests_total', { ...vm1, command: 'flush' })).toBe(1);
      expect(sample(m, 'cownbd_written_bytes_total', vm1)).toBe(10 * 65536);
      expect(sample(m, 'cownbd_read_bytes_total', vm1)).toBe(5 * 4096);
      expect(sample(m, 'cownbd_request_errors_total', { ...vm1, command: 'read', errno: 'EINVAL' })).toBe(1);
      expect(m.find((f) => f.name === 'cownbd_request_duration_seconds')!.type).toBe('HISTOGRAM');
      // The parser flattens labelled histograms away (it keeps one unlabelled series), so the
      // series themselves are read from the text.
      const series = (suffix: string) => Number(new RegExp(`^cownbd_request_duration_seconds_${suffix}\\{([^}]*)\\} (\\S+)$`, 'm').exec(res.text.split('\n').filter((l) => l.includes('export="vm1"') && l.includes('command="write"')).filter((l) => l.startsWith(`cownbd_request_duration_seconds_${suffix}`)).pop() ?? '')?.[2]);
      expect(series('count')).toBe(10);
      expect(series('sum')).toBeGreaterThan(0);
      expect(res.text).toMatch(/^cownbd_request_duration_seconds_bucket\{le="\+Inf",export="vm1",command="write"\} 10$/m);
      expect(sample(m, 'cownbd_connections', vm1)).toBe(1);
      expect(sample(m, 'cownbd_requests_in_flight', vm1)).toBe(0);
      expect(sample(m, 'cownbd_allocated_bytes', { ...vm1, depth: '1', format: 'cow' })).toBe(10 * 65536);
      expect(sample(m, 'cownbd_allocated_bytes', { ...vm1, depth: '2', format: 'raw' })).toBe((8 << 20) - 10 * 65536);
      expect(sample(m, 'cownbd_exports', {})).toBe(1);
      const { writeFileSync } = await import('node:fs');
      writeFileSync(stop, '');
      expect((await client).status).toBe(0);
    } finally {
      await srv.stop();
    }
  });
});
