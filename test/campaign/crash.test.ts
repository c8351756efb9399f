/**
 * Crash consistency campaign (issue 15): one server exports a cow overlay, an add-cow
 * overlay and --overlay-dir machines over one base; several connections per export write
 * concurrently (1 B – 1 MiB, unaligned, FUA, FLUSH on any connection, TRIM, WRITE_ZEROES)
 * and the server is killed with SIGKILL at a random moment: after a random delay, right
 * after a FLUSH/FUA reply, or while a new machine's overlay is being created. Then, from
 * the files on disk: every byte is what byte-model.ts allows (durable bytes exact, others
 * old or new), `check` is clean, the base is unchanged; every few points the server is
 * restarted and what it serves (nbdcopy) must equal uml_moo's merge of the cow files.
 * State carries over from point to point (each crash starts from the last one's state).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImageFormat } from '../../src/formats/open-image.js';
import { runCheck } from '../../src/tools/check.js';
import { CMD } from '../helpers/nbd-fixtures.js';
import { createPatternedImage, makeTempDir, readImage, sha256File } from '../helpers/images.js';
import { CLI_PATH, startServer, type RunningServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { ByteModel } from './byte-model.js';
import { CAMPAIGN, report, rng, timeoutFor } from './knobs.js';
import { AsyncNbdClient } from './nbd-async-client.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const CONNS_PER_EXPORT = 2;
const QUEUE_DEPTH = 4;
const VERIFY_SERVED_EVERY = 6;
const haveTools = requireTool('uml_moo') && requireTool('nbdcopy');

interface Target {
  readonly name: string;
  readonly file: string;
  readonly format: ImageFormat;
  state: Buffer;
}

/** One connection's workload until `stop()`; `onDurable` fires on every FLUSH/FUA reply. */
async function worker(c: AsyncNbdClient, model: ByteModel, r: () => number, stop: () => boolean, onDurable: () => void): Promise<void> {
  const running = new Set<Promise<void>>();
  const step = async (): Promise<void> => {
    const x = r();
    if (x < 0.08) {
      const token = model.flushSent();
      const rep = await c.flush();
      if (rep.error === 0) {
        model.flushAcked(token);
        onDurable();
      }
      return;
    }
    const kind = x < 0.13 ? 'trim' : x < 0.18 ? 'zero' : 'write';
    const length = Math.max(1, Math.min(MiB, Math.floor(Math.exp(r() * Math.log(MiB)))));
    const offset = Math.floor(r() * (model.size - length));
    if (model.busy(offset, length)) return;
    const fua = r() < 0.3;
    const op = model.issue(kind, offset, length, fua);
    const rep =
      kind === 'write'
        ? await c.write(offset, model.payload(op), fua)
        : await c.send(kind === 'zero' ? CMD.WRITE_ZEROES : CMD.TRIM, { offset, length, flags: fua ? 1 : 0 });
    model.acked(op, rep.error);
    if (fua && rep.error === 0) onDurable();
  };
  while (!stop() && !c.isClosed) {
    if (running.size >= QUEUE_DEPTH) {
      await Promise.race(running);
      continue;
    }
    const p = step().finally(() => running.delete(p));
    running.add(p);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await Promise.all(running);
}

describe.runIf(haveTools)('crash consistency campaign', () => {
  const tmp = makeTempDir('cownbd-crash-');
  const base = createPatternedImage(tmp.file('base.raw'), SIZE, 11);
  const baseBytes = readFileSync(base);
  const baseSum = sha256File(base);
  const ov = tmp.file('machines');
  const targets: Target[] = [];
  const totals = { kills: 0, points: 0, bytesVerified: 0, durableBytes: 0, requests: 0, violations: 0, servedChecks: 0, modes: { time: 0, durable: 0, creation: 0 } };

  beforeAll(() => {
    const cow = tmp.file('disk.cow');
    const ac = tmp.file('disk.add-cow');
    execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'cow', cow, '--backing', base]);
    execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'add-cow', ac, '--image', 'disk.img', '--backing', base, '--cluster-size', '4K']);
    targets.push({ name: 'cow', file: cow, format: 'cow', state: Buffer.from(baseBytes) }, { name: 'ac', file: ac, format: 'add-cow', state: Buffer.from(baseBytes) });
  });
  afterAll(() => {
    report(
      `crash: ${totals.kills} kills, ${totals.points} crash points (cow, add-cow, overlay-dir), ${totals.requests} requests, ` +
        `${totals.bytesVerified} bytes verified (${totals.durableBytes} durable), ${totals.servedChecks} served/uml_moo comparisons, ` +
        `kill moments ${JSON.stringify(totals.modes)}, ${totals.violations} violations, seed ${CAMPAIGN.seed}`,
    );
    tmp.cleanup();
  });

  it(
    `${CAMPAIGN.crashKills} kill -9 points keep every durable byte`,
    async () => {
      const r = rng(CAMPAIGN.seed);
      for (let point = 0; point < CAMPAIGN.crashKills; point++) {
        const machine: Target = { name: `vm${point}`, file: path.join(ov, `vm${point}.cow`), format: 'cow', state: Buffer.from(baseBytes) };
        const all = [...targets, machine];
        const srv = await startServer(['--export', `cow=${targets[0]!.file}`, '--export', `ac=${targets[1]!.file}`, '--base', base, '--overlay-dir', ov]);
        const models = all.map((t) => new ByteModel(t.state));
        let stopped = false;
        const modeRoll = r();
        const mode = modeRoll < 0.2 ? 'creation' : modeRoll < 0.6 ? 'durable' : 'time';
        totals.modes[mode]++;
        let durableEvents = 0;
        const killAfterDurable = 1 + Math.floor(r() * 25);
        const kill = () => {
          if (stopped) return;
          stopped = true;
          srv.proc.kill('SIGKILL');
        };
        const onDurable = () => {
          if (mode === 'durable' && ++durableEvents >= killAfterDurable) kill();
        };
        const timer = setTimeout(kill, mode === 'creation' ? Math.floor(r() * 15) : mode === 'time' ? 20 + Math.floor(r() * 300) : 700);
        const clients: AsyncNbdClient[] = [];
        const runs = all.flatMap((t, i) =>
          Array.from({ length: CONNS_PER_EXPORT }, async () => {
            const c = await AsyncNbdClient.connect(srv.port!, t.name).catch(() => undefined);
            if (!c) return;
            clients.push(c);
            await worker(c, models[i]!, r, () => stopped, onDurable);
          }),
        );
        await Promise.all(runs);
        clearTimeout(timer);
        kill();
        await srv.stop('SIGKILL');
        for (const c of clients) c.close();
        totals.kills++;

        for (let i = 0; i < all.length; i++) {
          const t = all[i]!;
          const actual = existsSync(t.file) ? await readImage(t.file, t.format) : Buffer.from(baseBytes);
          const v = models[i]!.verify(actual);
          totals.points++;
          totals.requests += models[i]!.ops.length;
          totals.bytesVerified += v.checkedBytes;
          totals.durableBytes += v.durableBytes;
          totals.violations += v.violations;
          expect(v.violations, `point ${point} (${mode}) export ${t.name}: ${v.firstViolation} (seed ${CAMPAIGN.seed})`).toBe(0);
          if (existsSync(t.file)) {
            const check = await runCheck(t.file);
            expect(check.exitCode, `point ${point} ${t.name}: ${JSON.stringify(check.findings)} ${check.error}`).toBe(0);
          }
          t.state = actual;
        }
        expect(sha256File(base), `base changed at point ${point}`).toBe(baseSum);
        if (point % VERIFY_SERVED_EVERY === VERIFY_SERVED_EVERY - 1) await compareServed(all, point);
      }
    },
    timeoutFor(CAMPAIGN.crashKills, 4000),
  );

  /** Restart the real server: what it serves equals the on-disk view and uml_moo's merge. */
  async function compareServed(all: Target[], point: number): Promise<void> {
    const srv: RunningServer = await startServer(['--export', `cow=${targets[0]!.file}`, '--export', `ac=${targets[1]!.file}`, '--base', base, '--overlay-dir', ov]);
    try {
      for (const t of all) {
        if (t.name.startsWith('vm') && !existsSync(t.file)) continue;
        const served = tmp.file(`served-${t.name}.raw`);
        execFileSync('nbdcopy', [srv.uri(t.name), served]);
        expect(readFileSync(served).equals(t.state), `point ${point}: served ${t.name} differs from the files`).toBe(true);
        if (t.format === 'cow') {
          const merged = tmp.file(`moo-${t.name}.raw`);
          execFileSync('uml_moo', [t.file, merged], { stdio: 'pipe' });
          expect(readFileSync(merged).subarray(0, SIZE).equals(t.state), `point ${point}: uml_moo merge of ${t.name} differs`).toBe(true);
        }
        totals.servedChecks++;
      }
    } finally {
      await srv.stop();
    }
  }
});
