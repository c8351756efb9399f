/**
 * Control-plane operations racing clients, black-box: the real server, python3-libnbd
 * clients, the admin API over its Unix socket (issue 26).
 *
 *  - reset / DELETE without force against bursts of clients that connect, write with FUA,
 *    FLUSH and disconnect: an operation either answers 409 or completes strictly before
 *    or after a client's session, so an acknowledged write is gone only when the
 *    server's log shows the operation after that session's "connection closed" line.
 *  - a live snapshot racing the last client's disconnect: the server stays up, every
 *    layer checks clean, every flushed block reads back after a restart (the chains open:
 *    no "mtime mismatch" from writes into a frozen layer).
 *  - admin DELETE and reset give back their --max-overlays count.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { closedLogged, startSessionDriver, unexplainedLosses } from '../helpers/session-driver.js';
import { api, waitFor } from './control-helpers.js';

const usable = requireNbdPython();
const BLOCK = 4096;

/**
 * Live snapshot against the last client's disconnect, ROUNDS times: a client of export
 * vm<r % EXPORTS> writes block r with FUA and flushes; then, a few random milliseconds
 * apart, a thread POSTs the snapshot and the client disconnects. One JSON line: the
 * snapshot answers.
 */
const SNAP_RACE = `
import nbd, json, struct, time, random, threading, socket, http.client
random.seed(26)
class U(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(SOCK)
answers = []
def snapshot(name, delay, out):
    time.sleep(delay)
    c = U("x"); c.request("POST", "/exports/%s/snapshot" % name); r = c.getresponse()
    out.append([r.status, json.loads(r.read())])
for r in range(ROUNDS):
    name = "vm%d" % (r % EXPORTS)
    h = nbd.NBD(); h.connect_uri(URI + name)
    h.pwrite(struct.pack("<QQ", r, 0x5eed) * (BLOCK // 16), r * BLOCK, flags=nbd.CMD_FLAG_FUA)
    h.flush()
    out = []
    t = threading.Thread(target=snapshot, args=(name, random.random() * 0.008, out)); t.start()
    time.sleep(random.random() * 0.008)
    h.shutdown()
    t.join()
    answers.append(out[0])
print(json.dumps(answers))
`;

/** What SNAP_RACE writes into block r. */
function roundBlock(r: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  for (let o = 0; o < BLOCK; o += 16) {
    b.writeBigUInt64LE(BigInt(r), o);
    b.writeBigUInt64LE(0x5eedn, o + 8);
  }
  return b;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.runIf(usable)('control-plane races', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('reset and DELETE without force never lose a write acknowledged to a connecting client', async () => {
    const base = createPatternedImage(tmp.file('golden.img'), 16 << 20, 5);
    const sock = tmp.file('admin1.sock');
    const srv = await startServer(['--base', base, '--overlay-dir', tmp.file('vms1'), '--admin', `unix:${sock}`]);
    const A = { socketPath: sock };
    const driver = startSessionDriver(srv.port!);
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      // Rounds: a burst of sessions, one reset or DELETE (no force) at a random moment
      // of it (fixed seed), then every acknowledged block of the round is read back. A
      // write may be gone only if the server's log shows the operation after the
      // session's connection closed (an operation that overlapped it must answer 409).
      let seed = 26;
      const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
      const ROUNDS = 40;
      const PER_ROUND = 6;
      const tally = { sessions: 0, acked: 0, ok: 0, refused: 0, checked: 0, erased: 0 };
      const lost: string[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        const ids = Array.from({ length: PER_ROUND }, (_, i) => round * PER_ROUND + i);
        const logFrom = srv.stderr().length;
        const sessions = driver.go('vm1', ids);
        // A session takes 50-150 ms here (handshake, creating the overlay, FUA, FLUSH).
        await sleep(rand() * 150);
        const op = round % 2 === 0 ? 'reset' : 'delete';
        const reply = op === 'reset' ? await api(A, 'POST', '/exports/vm1/reset') : await api(A, 'DELETE', '/exports/vm1');
        expect([200, 404, 409], `${op}: ${reply.text}`).toContain(reply.status);
        const done = await sessions;
        const acked = done.filter((s) => s.acked !== null);
        const intact = await driver.read('vm1', acked.map((s) => s.id));
        const gone = acked.filter((_, i) => !intact[i]);
        await waitFor(() => gone.every((s) => closedLogged(srv.stderr().slice(logFrom), s)), 'the log lines of the sessions');
        for (const s of unexplainedLosses(srv.stderr().slice(logFrom), gone)) lost.push(`session ${s.id} (round ${round}, ${op} ${reply.status})`);
        tally.sessions += done.length;
        tally.acked += acked.length;
        tally.checked += acked.length;
        tally.erased += gone.length;
        if (reply.status === 200) tally.ok++;
        if (reply.status === 409) tally.refused++;
      }
      console.log(
        `reset/delete race: ${tally.sessions} sessions (${tally.acked} acknowledged, ${tally.checked} read back), ${ROUNDS} operations ` +
          `(${tally.ok} succeeded, ${tally.refused} answered 409); ${tally.erased} writes erased by an operation after their session, ${lost.length} lost`,
      );
      expect(tally.ok, 'some operations must succeed for the race to mean anything').toBeGreaterThan(3);
      expect(tally.refused, 'some operations must meet clients').toBeGreaterThan(0);
      expect(lost).toEqual([]);
      expect(srv.proc.exitCode).toBe(null);
    } finally {
      driver.stop();
      await srv.stop();
    }
  }, 180_000);

  it('a live snapshot racing the last client\'s disconnect keeps the server up, the layers clean and the data', async () => {
    const base = createPatternedImage(tmp.file('golden2.img'), 8 << 20, 6);
    const sock = tmp.file('admin2.sock');
    const dir = tmp.file('vms2');
    const args = ['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`];
    let srv = await startServer(args);
    const ROUNDS = 30;
    const EXPORTS = 6;
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      const out = await nbdPython(SNAP_RACE, { URI: srv.uri(''), SOCK: sock, ROUNDS, EXPORTS, BLOCK }, 120_000);
      const answers = JSON.parse(out) as Array<[number, { live?: boolean; error?: string }]>;
      const live = answers.filter(([st, b]) => st === 201 && b.live).length;
      const offline = answers.filter(([st, b]) => st === 201 && !b.live).length;
      console.log(`snapshot/disconnect race: ${ROUNDS} rounds, ${live} live and ${offline} offline snapshots`);
      for (const [st, b] of answers) expect(st, JSON.stringify(b)).toBe(201);
      expect(srv.proc.exitCode, srv.stderr().slice(-2000)).toBe(null);
      expect(srv.stderr()).not.toContain('device is closed');
      expect(await srv.stop()).toBe(0);

      // Every layer checks clean, and every chain opens (no "mtime mismatch").
      const files = readdirSync(dir).filter((f) => f.endsWith('.cow'));
      expect(files).toHaveLength(EXPORTS * (1 + ROUNDS / EXPORTS));
      for (const f of files) {
        const check = spawnSync(process.execPath, [CLI_PATH, 'check', `${dir}/${f}`], { encoding: 'utf8' });
        expect(check.status, `check ${f}: ${check.stdout}${check.stderr}`).toBe(0);
      }
      srv = await startServer(args);
      for (let e = 0; e < EXPORTS; e++) {
        const blocks = Array.from({ length: ROUNDS / EXPORTS }, (_, i) => i * EXPORTS + e);
        const got = JSON.parse(
          await nbdPython(
            `
import nbd, json
h = nbd.NBD(); h.connect_uri(URI)
print(json.dumps([h.pread(BLOCK, b * BLOCK).hex() for b in BLOCKS]))
`,
            { URI: srv.uri(`vm${e}`), BLOCK, BLOCKS: blocks },
          ),
        ) as string[];
        blocks.forEach((b, i) => expect(got[i], `vm${e} block ${b}`).toBe(roundBlock(b).toString('hex')));
      }
    } finally {
      await srv.stop();
    }
  }, 180_000);

  it('admin DELETE and reset give back their --max-overlays count', async () => {
    const base = createPatternedImage(tmp.file('golden3.img'), 4 << 20, 7);
    const sock = tmp.file('admin3.sock');
    const dir = tmp.file('vms3');
    const srv = await startServer(['--base', base, '--overlay-dir', dir, '--admin', `unix:${sock}`, '--max-overlays', '3']);
    const A = { socketPath: sock };
    /** Connect to NAME (creating its overlay), write and read back: true if it was served. */
    const served = async (name: string): Promise<boolean> =>
      (
        await nbdPython(
          `
import nbd
try:
    h = nbd.NBD(); h.connect_uri(URI)
    h.pwrite(b"q" * 512, 0); h.flush()
    print("yes" if h.pread(512, 0) == b"q" * 512 else "wrong data")
except nbd.Error:
    print("no")
`,
          { URI: srv.uri(name) },
        )
      ).trim() === 'yes';
    try {
      await waitFor(() => srv.stdout().includes('admin API on'), 'the admin API');
      for (const name of ['vm1', 'vm2', 'vm3']) expect(await served(name), name).toBe(true);
      expect(await served('vm4'), 'a 4th overlay with --max-overlays 3').toBe(false);
      expect((await api(A, 'DELETE', '/exports/vm1')).status).toBe(200);
      expect((await api(A, 'DELETE', '/exports/vm2')).status).toBe(200);
      expect(await served('vm4'), 'vm4 after two deletes').toBe(true);
      expect(await served('vm5'), 'vm5 after two deletes').toBe(true);
      expect(await served('vm6'), 'vm6: vm3, vm4, vm5 exist').toBe(false);
      // A reset overlay without snapshot layers is deleted (made afresh at the next
      // connect): the machine reconnects even with the limit reached.
      expect((await api(A, 'POST', '/exports/vm3/reset')).status).toBe(200);
      expect(await served('vm3'), 'vm3 after its reset').toBe(true);
      expect(await served('vm6'), 'vm6: still vm3, vm4, vm5').toBe(false);
      // Snapshot layers are not machines: they count neither now nor after a restart.
      expect((await api(A, 'POST', '/exports/vm4/snapshot')).status).toBe(201);
      expect((await api(A, 'DELETE', '/exports/vm5')).status).toBe(200);
      expect(await served('vm6'), 'vm6 after deleting vm5').toBe(true);
      expect(readdirSync(dir).sort()).toEqual(['vm3.cow', 'vm4.cow', 'vm4.snap-1.cow', 'vm6.cow']);
    } finally {
      await srv.stop();
    }
    const again = await startServer(['--base', base, '--overlay-dir', dir, '--max-overlays', '4']);
    try {
      const out = await nbdPython(`
import nbd
h = nbd.NBD(); h.connect_uri(URI); h.pwrite(b"z" * 512, 0); h.flush(); print("yes")
`, { URI: again.uri('vm7') });
      expect(out.trim(), '3 machines (and a snapshot layer) leave room for a 4th').toBe('yes');
    } finally {
      await again.stop();
    }
  }, 120_000);
});
