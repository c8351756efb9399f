/**
 * Protocol fuzzing campaign (issue 15): structure-aware mutations of whole client
 * conversations (protocol-cases.ts), one connection per case, many at once, while a
 * python3-libnbd canary writes and verifies its own export throughout. The server must
 * never exit, never give the canary a wrong byte, close every fuzz connection within 5 s
 * of the case's last byte (the case half-closes), and keep its RSS bounded.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { findNbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { cpuSeconds, rssMiB } from '../helpers/process-stats.js';
import { CAMPAIGN, report, rng, timeoutFor } from './knobs.js';
import { conversation, mutate } from './protocol-cases.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const PARALLEL = 128;
const CLOSE_DEADLINE_MS = 5000;
const RSS_GROWTH_LIMIT_MIB = 256;
const hasNbd = requireNbdPython();

const CANARY = `
import nbd, os, sys, json, random
h = nbd.NBD(); h.connect_uri(URI)
n = bad = 0
random.seed(7)
while True:
    off = random.randrange(0, (4 << 20) - 65536)
    data = os.urandom(random.choice([512, 4096, 65536]))
    h.pwrite(data, off)
    if h.pread(len(data), off) != data: bad += 1
    n += 1
    if n % 20 == 0:
        h.flush()
        if os.path.exists(STOP): break
print(json.dumps({"n": n, "bad": bad}))
`;

/** One case: send, half-close, read until the server closes; resolves with ms from half-close to close. */
function runCase(port: number, bytes: Buffer): Promise<number> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let ended = 0;
    const timer = setTimeout(() => {
      s.destroy();
      resolve(Infinity);
    }, CLOSE_DEADLINE_MS + 2000);
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    s.once('connect', () => {
      s.end(bytes, () => (ended = Date.now()));
    });
    s.once('close', () => {
      clearTimeout(timer);
      resolve(ended ? Date.now() - ended : 0);
    });
  });
}

describe.runIf(hasNbd)('protocol fuzzing campaign', () => {
  const tmp = makeTempDir('cownbd-fuzz-');
  afterAll(() => tmp.cleanup());

  it(
    `${CAMPAIGN.protocolCases} mutated conversations: no exit, no wrong canary byte, closes within 5 s, RSS bounded`,
    async () => {
      const disk = createRawImage(tmp.file('disk.raw'), SIZE, [[0, MiB]], 4);
      const canaryImg = createRawImage(tmp.file('canary.raw'), 4 * MiB);
      const srv = await startServer(['--export', `disk=${disk}`, '--export', `canary=${canaryImg}`, '--log-level', 'error']);
      const stop = tmp.file('stop');
      const canary = spawn(findNbdPython()!, ['-c', `URI = ${JSON.stringify(srv.uri('canary'))}\nSTOP = ${JSON.stringify(stop)}\n${CANARY}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let canaryOut = '';
      canary.stdout.on('data', (d: Buffer) => (canaryOut += d.toString()));
      canary.stderr.on('data', (d: Buffer) => (canaryOut += d.toString()));
      const canaryDone = new Promise<number | null>((resolve) => canary.once('exit', resolve));
      const pid = srv.proc.pid!;
      const rssStart = rssMiB(pid);
      const cpuStart = cpuSeconds(pid);
      let rssMax = rssStart;
      let slowest = 0;
      let slow = 0;
      const r = rng(CAMPAIGN.seed);
      const started = Date.now();
      try {
        let next = 0;
        const lane = async () => {
          while (next < CAMPAIGN.protocolCases) {
            const i = next++;
            const ms = await runCase(srv.port!, mutate(r, conversation(r, SIZE)));
            slowest = Math.max(slowest, ms);
            if (ms > CLOSE_DEADLINE_MS) slow++;
            if (i % 500 === 0) {
              rssMax = Math.max(rssMax, rssMiB(pid));
              expect(srv.proc.exitCode, `server exited at case ${i}: ${srv.stderr().slice(-2000)}`).toBeNull();
            }
          }
        };
        await Promise.all(Array.from({ length: PARALLEL }, lane));
      } finally {
        const { writeFileSync } = await import('node:fs');
        writeFileSync(stop, '');
      }
      const canaryStatus = await canaryDone;
      const seconds = (Date.now() - started) / 1000;
      const c = JSON.parse(canaryOut.trim().split('\n').pop() ?? '{}') as { n?: number; bad?: number };
      report(
        `protocol: ${CAMPAIGN.protocolCases} cases in ${seconds.toFixed(1)} s (${(CAMPAIGN.protocolCases / seconds).toFixed(0)}/s), ` +
          `server CPU ${(cpuSeconds(pid) - cpuStart).toFixed(1)} s, slowest close ${slowest} ms, ${slow} over 5 s, RSS ${rssStart.toFixed(0)}→max ${rssMax.toFixed(0)} MiB, ` +
          `canary ${c.n} write+read rounds, ${c.bad} wrong, server alive: ${srv.proc.exitCode === null}, seed ${CAMPAIGN.seed}`,
      );
      expect(srv.proc.exitCode).toBeNull();
      expect(canaryStatus, canaryOut).toBe(0);
      expect(c.bad).toBe(0);
      expect(c.n).toBeGreaterThan(0);
      expect(slow, `slowest ${slowest} ms`).toBe(0);
      expect(rssMax - rssStart).toBeLessThan(RSS_GROWTH_LIMIT_MIB);
      expect(await srv.stop()).toBe(0);
    },
    timeoutFor(CAMPAIGN.protocolCases, 5),
  );
});
