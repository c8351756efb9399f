/**
 * systemd Type=notify readiness: with $NOTIFY_SOCKET set, `serve` sends READY=1 (with a
 * STATUS= line) once it listens, and STOPPING=1 when it starts to drain, through the real
 * `systemd-notify` binary (contrib/systemd/cownbd.service has NotifyAccess=all). The
 * receiving end is a real Unix datagram socket, as systemd's, bound by python3 (Node's
 * core has no datagram Unix sockets). The variable is not passed on to --run children.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const hasNotify = requireTool('systemd-notify');
const hasPython = requireTool('python3');

/** A datagram socket at `path` that records every message (one JSON line each) until killed. */
function notifyListener(path: string): { messages(): string[]; ready: Promise<void>; close(): void } {
  const py = spawn('python3', ['-u', '-c', `
import socket, sys, json, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("BOUND", flush=True)
while True:
    data, anc, flags, addr = s.recvmsg(65536, 4096)
    # systemd-notify waits for a BARRIER: it passes a pipe fd and waits for systemd to close it.
    for level, kind, fds in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(fds) - len(fds) % 4, 4):
                os.close(int.from_bytes(fds[i:i + 4], sys.byteorder))
    print(json.dumps(data.decode()), flush=True)
`, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const ready = new Promise<void>((resolve) =>
    py.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.startsWith('BOUND')) resolve();
    }),
  );
  return {
    ready,
    messages: () => out.split('\n').slice(1).filter(Boolean).map((l) => JSON.parse(l) as string),
    close: () => py.kill('SIGKILL'),
  };
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('sd_notify (systemd Type=notify)', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it.runIf(hasNotify && hasPython)('READY=1 once listening, STOPPING=1 on SIGTERM; --run children do not inherit NOTIFY_SOCKET', async () => {
    const img = createRawImage(tmp.file('n.raw'), 1024 * 1024);
    const sock = tmp.file('notify.sock');
    const listener = notifyListener(sock);
    await listener.ready;
    const envOut = tmp.file('child-env');
    try {
      // --print-uri: under --run cownbd prints only what it is asked to (the helper waits for a URI line).
      const srv = await startServer([img, '--print-uri', '--run', `printf '%s' "\${NOTIFY_SOCKET-unset}" > ${envOut}; sleep 30`], { env: { NOTIFY_SOCKET: sock } });
      await waitFor(() => listener.messages().some((m) => m.includes('READY=1')));
      const ready = listener.messages().find((m) => m.includes('READY=1'))!;
      expect(ready).toMatch(/STATUS=serving 1 listener/);
      await waitFor(() => {
        try {
          return readFileSync(envOut, 'utf8').length > 0;
        } catch {
          return false;
        }
      });
      expect(readFileSync(envOut, 'utf8')).toBe('unset');
      expect(await srv.stop('SIGTERM')).toBe(0);
      await waitFor(() => listener.messages().some((m) => m.includes('STOPPING=1')));
    } finally {
      listener.close();
    }
  });

  it('without NOTIFY_SOCKET nothing is sent and nothing is logged about it', async () => {
    const img = createRawImage(tmp.file('plain.raw'), 1024 * 1024);
    const srv = await startServer([img]);
    expect(await srv.stop()).toBe(0);
    expect(srv.stderr()).not.toMatch(/sd_notify|systemd-notify/);
  });
});
