/**
 * Interop: nbd-client 3.24 (the userspace half of the Linux kernel client). Without the
 * nbd kernel module only the listing works here: `nbd-client -l` sends LIST, then ABORT,
 * and prints one line per export: "name" or, when the server sent one, "name: description".
 * The kernel-side data path is replayed in kernel-client-replay.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { startServer, type RunningServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { describeResult, nbdClientList, serveImage, TARGET, type Target } from '../helpers/clients.js';

const MiB = 1024 * 1024;
const hasNbdClient = requireTool('nbd-client');

describe.runIf(hasNbdClient)('nbd-client -l, single export', () => {
  let tmp: TempDir;
  let target: Target;
  beforeAll(async () => {
    tmp = makeTempDir();
    target = await serveImage(createRawImage(tmp.file('one.raw'), 4 * MiB), { name: 'solo', description: 'The only disk' });
  });
  afterAll(async () => {
    await target?.stop();
    tmp?.cleanup();
  });

  it('prints the export and its description', async () => {
    const r = await nbdClientList(target.socketPath ? { socket: target.socketPath } : { host: target.host!, port: target.port! }, {
      timeoutMs: 15_000,
    });
    expect(r.code, describeResult(r)).toBe(0);
    expect(r.stdout).toContain('Negotiation: ..');
    expect(r.exports).toEqual([{ name: 'solo', description: 'The only disk' }]);
  });
});

describe.runIf(hasNbdClient && TARGET === 'cownbd')('nbd-client -l, several exports', () => {
  let tmp: TempDir;
  const servers: RunningServer[] = [];
  let tcp: RunningServer;
  let unix: RunningServer;
  const exportArgs = (t: TempDir) => [
    '--export', `web=${t.file('web.raw')},description=Web server root disk`,
    '--export', `db=${t.file('db.raw')},ro,description=Database (read-only)`,
    '--export', `scratch=${t.file('scratch.raw')}`,
  ];
  beforeAll(async () => {
    tmp = makeTempDir();
    for (const n of ['web', 'db', 'scratch']) createRawImage(tmp.file(`${n}.raw`), 2 * MiB);
    tcp = await startServer(exportArgs(tmp));
    servers.push(tcp);
    unix = await startServer(exportArgs(tmp), { unix: true });
    servers.push(unix);
  });
  afterAll(async () => {
    for (const s of servers) await s.stop();
    tmp?.cleanup();
  });

  const expected = [
    { name: 'db', description: 'Database (read-only)' },
    { name: 'scratch' },
    { name: 'web', description: 'Web server root disk' },
  ];
  const byName = (a: { name: string }, b: { name: string }) => a.name.localeCompare(b.name);

  it('over TCP lists every export, with descriptions where set', async () => {
    const r = await nbdClientList({ host: '127.0.0.1', port: tcp.port! }, { timeoutMs: 15_000 });
    expect(r.code, describeResult(r)).toBe(0);
    expect([...r.exports].sort(byName)).toEqual(expected);
  });

  it('over a Unix socket (-u) lists the same exports', async () => {
    const r = await nbdClientList({ socket: unix.socketPath! }, { timeoutMs: 15_000 });
    expect(r.code, describeResult(r)).toBe(0);
    expect([...r.exports].sort(byName)).toEqual(expected);
  });

  it('the server survives the LIST + ABORT and keeps serving', async () => {
    for (let i = 0; i < 3; i++) {
      const r = await nbdClientList({ host: '127.0.0.1', port: tcp.port! }, { timeoutMs: 15_000 });
      expect(r.exports).toHaveLength(3);
    }
    expect(tcp.proc.exitCode).toBeNull();
  });
});
