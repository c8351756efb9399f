/**
 * Control-plane race campaign (issue 26): seeded rounds of one admin operation — reset or
 * DELETE with or without force, snapshot, reload, listing — fired at a random moment into a
 * burst of clients that connect, write with FUA, FLUSH and disconnect, on three per-machine
 * overlays of the real server. `npm test` runs CAMPAIGN.controlRounds with the fixed seed;
 * `npm run torture` a fresh seed (and `--control-rounds N`).
 *
 * Each round checks, reading back over a new connection:
 *  - no 5xx, and only the answers the API documents for that operation;
 *  - every acknowledged write is there unless the round's operation erased it after the
 *    session: a reset or DELETE (with force too: it disconnects first) whose log line
 *    comes after the server's "connection closed" line of that session (an operation
 *    overlapping a session without force must answer 409); snapshot, reload and listing
 *    erase nothing;
 * and at the end: the server is still up, stops cleanly, every layer passes
 * `cownbd check`, and a restarted server opens every export.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { api, waitFor, type HttpReply } from '../control/control-helpers.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { closedLogged, DRIVER_BLOCK, DRIVER_BLOCKS, startSessionDriver, unexplainedLosses } from '../helpers/session-driver.js';
import { CAMPAIGN, report, rng, timeoutFor } from './knobs.js';

type Op = 'reset' | 'reset-force' | 'delete' | 'delete-force' | 'snapshot' | 'reload' | 'list';
const OPS: Op[] = ['reset', 'reset-force', 'delete', 'delete-force', 'snapshot', 'reload', 'list'];
const EXPORTS = ['vm0', 'vm1', 'vm2'];
const MAX_BURST = 6;

/** The answers the admin API documents for each operation. */
const ALLOWED: Record<Op, number[]> = {
  reset: [200, 404, 409],
  'reset-force': [200, 404],
  delete: [200, 404, 409],
  'delete-force': [200, 404],
  // 404: no overlay yet; 409: --max-snapshots reached.
  snapshot: [201, 404, 409],
  reload: [200],
  list: [200],
};

function send(A: { socketPath: string }, op: Op, name: string): Promise<HttpReply> {
  switch (op) {
    case 'reset':
    case 'reset-force':
      return api(A, 'POST', `/exports/${name}/reset${op === 'reset-force' ? '?force=true' : ''}`);
    case 'delete':
    case 'delete-force':
      return api(A, 'DELETE', `/exports/${name}${op === 'delete-force' ? '?force=true' : ''}`);
    case 'snapshot':
      return api(A, 'POST', `/exports/${name}/snapshot`);
    case 'reload':
      return api(A, 'POST', '/reload');
    case 'list':
      return api(A, 'GET', '/exports');
  }
}

describe.runIf(requireNbdPython())('control-plane race campaign', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const rounds = CAMPAIGN.controlRounds;

  it(`${rounds} rounds of admin operations against connecting, writing and disconnecting clients`, async () => {
    createPatternedImage(tmp.file('golden.img'), DRIVER_BLOCKS * DRIVER_BLOCK, 3);
    const sock = tmp.file('admin.sock');
    const config = tmp.file('c.toml');
    writeFileSync(config, `[server]\nadmin = "unix:${sock}"\n[overlays]\nbase = "golden.img"\ndir = "vms"\n`);
    let srv = await startServer(['--config', config]);
    const A = { socketPath: sock };
    const driver = startSessionDriver(srv.port!);
    const rand = rng(CAMPAIGN.seed);
    const answers = new Map<string, number>();
    const lost: string[] = [];
    let sessions = 0;
    let acked = 0;
    let erased = 0;
    let nextId = 0;
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      for (let round = 0; round < rounds; round++) {
        const name = EXPORTS[Math.floor(rand() * EXPORTS.length)]!;
        const op = OPS[Math.floor(rand() * OPS.length)]!;
        const ids = Array.from({ length: 1 + Math.floor(rand() * MAX_BURST) }, () => nextId++);
        const logFrom = srv.stderr().length;
        const burst = driver.go(name, ids);
        // A session takes 50-150 ms (handshake, creating the overlay, FUA, FLUSH).
        await new Promise((r) => setTimeout(r, rand() * 150));
        const reply = await send(A, op, name);
        const key = `${op} ${reply.status}`;
        answers.set(key, (answers.get(key) ?? 0) + 1);
        expect(ALLOWED[op], `round ${round}: ${op} ${name} answered ${reply.status}: ${reply.text}`).toContain(reply.status);
        const done = await burst;
        sessions += done.length;
        acked += done.filter((s) => s.acked !== null).length;
        const ok = done.filter((s) => s.acked !== null);
        const intact = await driver.read(name, ok.map((s) => s.id));
        const gone = ok.filter((_, i) => !intact[i]);
        erased += gone.length;
        await waitFor(() => gone.every((s) => closedLogged(srv.stderr().slice(logFrom), s)), 'the log lines of the sessions');
        for (const s of unexplainedLosses(srv.stderr().slice(logFrom), gone)) lost.push(`session ${s.id} on ${name} (round ${round}, ${op} answered ${reply.status})`);
      }
      report(
        `control races: seed ${CAMPAIGN.seed}, ${rounds} rounds, ${sessions} sessions (${acked} acknowledged and read back), ` +
          `${erased} writes erased by an operation after their session, ${lost.length} lost; answers: ${[...answers].sort().map(([k, n]) => `${k} ×${n}`).join(', ')}`,
      );
      expect(lost).toEqual([]);
      expect(srv.proc.exitCode, srv.stderr().slice(-2000)).toBe(null);
      driver.stop();
      expect(await srv.stop()).toBe(0);

      const files = readdirSync(tmp.file('vms')).filter((f) => f.endsWith('.cow'));
      for (const f of files) {
        const check = spawnSync(process.execPath, [CLI_PATH, 'check', tmp.file(`vms/${f}`)], { encoding: 'utf8' });
        expect(check.status, `check ${f}: ${check.stdout}${check.stderr}`).toBe(0);
      }
      srv = await startServer(['--config', config]);
      for (const name of EXPORTS) {
        const out = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI); print(len(h.pread(4096, 0)))
`, { URI: srv.uri(name) });
        expect(out.trim(), name).toBe('4096');
      }
    } finally {
      driver.stop();
      await srv.stop();
    }
  }, timeoutFor(rounds, 1500));
});
