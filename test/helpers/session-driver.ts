/**
 * Test helper: a python3-libnbd process that runs bursts of short client sessions on
 * command, for races against the control plane (test/control/races.test.ts, the control
 * campaign in test/campaign/).
 *
 *   const d = startSessionDriver(srv.uri(''));       // export names are appended
 *   await d.go('vm1', [7, 8, 9])  → one Session per id, run at once (threads): connect,
 *       write block (id % DRIVER_BLOCKS) with FUA, FLUSH, disconnect
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
}

const DRIVER = `
import nbd, sys, json, struct, time, threading
def data(i): return struct.pack("<QQ", i, 0x5eed) * (BLOCK // 16)
def where(i): return (i % BLOCKS) * BLOCK
def session(name, i, res):
    t0 = time.time()
    acked = None
    try:
        h = nbd.NBD(); h.connect_uri(URI + name)
        h.pwrite(data(i), where(i), flags=nbd.CMD_FLAG_FUA)
        h.flush()
        acked = time.time()
        h.shutdown()
    except nbd.Error:
        pass
    res.append([i, t0, acked, time.time()])
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
        h = nbd.NBD(); h.connect_uri(URI + name)
        print(json.dumps([h.pread(BLOCK, where(i)) == data(i) for i in ids]), flush=True)
        h.shutdown()
`;

export interface SessionDriver {
  go(exportName: string, ids: number[]): Promise<Session[]>;
  read(exportName: string, ids: number[]): Promise<boolean[]>;
  stop(): void;
}

/** Start the driver; `uriPrefix` + export name is each session's URI. */
export function startSessionDriver(uriPrefix: string): SessionDriver {
  const py = findNbdPython();
  if (!py) throw new Error('no python3 with the nbd module (install python3-libnbd)');
  const prelude = `URI = ${JSON.stringify(uriPrefix)}\nBLOCK = ${DRIVER_BLOCK}\nBLOCKS = ${DRIVER_BLOCKS}\n`;
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
    go: async (name, ids) => ((await ask(`go ${name} ${JSON.stringify(ids)}`)) as Array<[number, number, number | null, number]>).map(([id, started, acked, ended]) => ({ id, started, acked, ended })),
    read: async (name, ids) => (await ask(`read ${name} ${JSON.stringify(ids)}`)) as boolean[],
    stop: () => proc.kill(),
  };
}
