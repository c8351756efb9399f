/**
 * The shared-reads fast path (src/server/shared-reads.ts) is really in use on the Node we
 * pin (package.json devDependencies "node"). It rests on a Node internal: the accepted
 * socket's `_handle`, re-wrapped through net.Socket's `handle` option so it can read
 * with `onread`. Were a Node release to move that, the server would quietly fall back to
 * Node's stream reads (a fresh buffer per read: the GC load shared reads removed) and
 * every other test would still pass. So here a real client (nbdinfo) connects and the
 * server must have served it on the shared path; and `serve` must say at start, in an
 * info log line, which read path it uses (stream when COWNBD_NO_SHARED_READS=1 asks so).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer } from '../../src/api/create-server.js';
import { mustSucceed, nbdinfo, serverLog } from '../helpers/clients.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { REPO_ROOT, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const hasNbdinfo = requireTool('nbdinfo');
const SIZE = 1024 * 1024;
const pinned = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }).devDependencies.node!;
const onNode = `Node ${process.version} (pinned: ${pinned})`;

describe('shared reads: the fast path is the one in use', () => {
  let tmp: TempDir;
  let img: string;
  beforeAll(() => {
    tmp = makeTempDir('cownbd-shared-reads-');
    img = createRawImage(tmp.file('disk.raw'), SIZE, [[0, 4096]]);
  });
  afterAll(() => tmp.cleanup());

  it('runs on the pinned Node major', () => {
    expect(process.versions.node.split('.')[0], onNode).toBe(/(\d+)/.exec(pinned)![1]);
  });

  it.runIf(hasNbdinfo)('a real client is served through the shared buffer', async () => {
    const server = await createServer({ export: [{ name: 'disk', path: img, readOnly: true }], listen: [{ host: '127.0.0.1', port: 0 }] });
    try {
      expect(server.nbd.plannedReadPath().readPath, onNode).toBe('shared');
      await server.listen();
      const r = mustSucceed(await nbdinfo(['--size', server.uri('disk')]));
      expect(r.stdout.trim()).toBe(String(SIZE));
      expect(server.nbd.readPathCounts(), `${onNode}: connections per read path`).toEqual({ shared: 1, stream: 0 });
    } finally {
      await server.close();
    }
  });

  it.runIf(hasNbdinfo)('serve logs the read path at start: shared by default, stream when the policy turns it off', async () => {
    const lines = async (env: Record<string, string>) => {
      const srv = await startServer(['-r', img], { env });
      try {
        mustSucceed(await nbdinfo(['--size', srv.uri()]));
      } finally {
        await srv.stop();
      }
      return serverLog(srv).filter((l) => typeof l.msg === 'string' && l.msg.startsWith('read path:'));
    };
    const shared = await lines({ COWNBD_LOG_LEVEL: 'info' });
    expect(shared, onNode).toHaveLength(1);
    expect(shared[0]).toMatchObject({ level: 30, msg: 'read path: shared', readPath: 'shared' });
    const stream = await lines({ COWNBD_LOG_LEVEL: 'info', COWNBD_NO_SHARED_READS: '1' });
    expect(stream).toHaveLength(1);
    expect(stream[0]).toMatchObject({ level: 30, msg: 'read path: stream', readPath: 'stream' });
    expect(String(stream[0]!.reason)).toContain('COWNBD_NO_SHARED_READS=1');
  });
});
