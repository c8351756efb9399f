/**
 * Test helper: a python3-libnbd process that runs bursts of short client sessions on
 * command, for races against the control plane (test/control/races.test.ts, the control
 * campaign in test/campaign/).
 *
 *   const d = startSessionDriver(srv.port!);          // a TCP server on 127.0.0.1
 *   await d.go('vm1', [7, 8, 9])  → one Session per id, run at once (threads): connect,
 *       write block (id % DRIVER_BLOCKS) with FUA, FLUSH, disconnect; each session's
 *       local port is its `peer` in the server's log lines
 *   await d.read('vm1', [7, 8])   → whether each id's block reads back as that id wrote it
 *
 * Block contents carry the session id, so a block written again by a later session never
 * passes for an earlier one.
 */
import { spawn } from 'node:child_process';
import { findNbdPython } from './server.js';

export const DRIVER_BLOCK = 4096;
/** Blocks the sessions write into: the export must be at least DRIVER_BLOCKS * 4 KiB. */
export const DRIVER_BLOCKS = 2048;

/** One session: when its connect began, when its FLUSH was acknowledged (null: failed), when its disconnect was done. */
export interface Session {
  readonly id: number;
  readonly started: number;
  readonly acked: number | null;
  /** The server closes the socket before it releases the export. */
  readonly ended: number;
  /** The server's name for this client in its log lines ("127.0.0.1:PORT"). */
  readonly peer: string;
}

const DRIVER = `
import nbd, sys, json, struct, time, threading, socket
def data(i): return struct.pack("<QQ", i, 0x5eed) * (BLOCK // 16)
def where(i): return (i % BLOCKS) * BLOCK
def session(name, i, res):
    t0 = time.time()
    acked = None
    port = 0
    try:
        s = socket.create_connection(("127.0.0.1", PORT))
        port = s.getsockname()[1]
        h = nbd.NBD(); h.set_export_name(name); h.connect_socket(s.detach())
        h.pwrite(data(i), where(i), flags=nbd.CMD_FLAG_FUA)
        h.flush()
        acked = time.time()
        h.shutdown()
    except nbd.Error:
        pass
    res.append([i, t0, acked, time.time(), "127.0.0.1:%d" % port])
for line in sys.stdin:
    cmd, name, arg = line.split(" ", 2)
    ids = json.loads(arg)
    if cmd == "go":
        res = []
        ts = [threading.Thread(target=session, args=(name, i, res)) for i in ids]
        for t in ts: t.start()
        for t in ts: t.join()
        print(json.dumps(res), flush=True)
    else:
        h = nbd.NBD(); h.connect_uri("nbd://127.0.0.1:%d/%s" % (PORT, name))
        print(json.dumps([h.pread(BLOCK, where(i)) == data(i) for i in ids]), flush=True)
        h.shutdown()
`;

export interface SessionDriver {
  go(exportName: string, ids: number[]): Promise<Session[]>;
  read(exportName: string, ids: number[]): Promise<boolean[]>;
  stop(): void;
}

/** Start the driver against the server listening on 127.0.0.1:`port`. */
export function startSessionDriver(port: number): SessionDriver {
  const py = findNbdPython();
  if (!py) throw new Error('no python3 with the nbd module (install python3-libnbd)');
  const prelude = `PORT = ${port}\nBLOCK = ${DRIVER_BLOCK}\nBLOCKS = ${DRIVER_BLOCKS}\n`;
  const proc = spawn(py, ['-c', prelude + DRIVER], { stdio: ['pipe', 'pipe', 'pipe'] });
  let buf = '';
  let stderr = '';
  const waiting: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  proc.once('exit', (code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`session driver exited (${code}): ${stderr}`));
  });
  proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  proc.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      waiting.shift()?.resolve(JSON.parse(line));
    }
  });
  const ask = (line: string): Promise<unknown> =>
    new Promise((resolve, reject) => {
      waiting.push({ resolve, reject });
      proc.stdin.write(`${line}\n`);
    });
  return {
    go: async (name, ids) =>
      ((await ask(`go ${name} ${JSON.stringify(ids)}`)) as Array<[number, number, number | null, number, string]>).map(([id, started, acked, ended, peer]) => ({ id, started, acked, ended, peer })),
    read: async (name, ids) => (await ask(`read ${name} ${JSON.stringify(ids)}`)) as boolean[],
    stop: () => proc.kill(),
  };
}

/** The server has logged the close of `s`'s connection. */
export function closedLogged(log: string, s: Session): boolean {
  return log.split('\n').some((l) => l.includes(`"peer":"${s.peer}"`) && l.includes('"connection closed"'));
}

/** What the server logs when a reset or a delete has happened (src/control/operations.ts). */
export const ERASING_LOG_LINES: readonly string[] = ['export reset to its backing', 'overlay deleted'];

/**
 * The lost sessions the server's log does not explain. A reset or delete may erase a
 * session's acknowledged write only if it ran after that session's release, which follows
 * the server's "connection closed" line for it; `log` is the server's stderr (JSON lines)
 * from before the sessions began, with at most one reset or delete in it.
 */
export function unexplainedLosses(log: string, lost: readonly Session[]): Session[] {
  const lines = log
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: string; peer?: string });
  const erased = lines.findIndex((l) => ERASING_LOG_LINES.includes(l.msg ?? ''));
  return lost.filter((s) => {
    const closed = lines.findIndex((l) => l.msg === 'connection closed' && l.peer === s.peer);
    return erased < 0 || closed < 0 || erased < closed;
  });
}
