/**
 * Compact manifests on this machine (issue 21; docs/object-store.md "Manifests on this
 * machine"): the published JSON manifest is parsed once per machine and kept as the compact
 * binary file next to the chunk cache; opens and restarts read that, with the store down,
 * fast for a 1 TiB image; one table per version serves every export of a process; cache
 * files written by earlier releases (`VERSION.mf`) still work and are converted.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logging.js';
import { decodeManifest } from '../../src/objectstore/manifest.js';
import { ManifestCache } from '../../src/objectstore/manifest-cache.js';
import { StoreClient } from '../../src/objectstore/store-client.js';
import { nbdinfoJson } from '../helpers/clients.js';
import { startFaultS3Server, type FaultS3Server } from '../helpers/fault-s3-server.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { S3_ENV } from '../helpers/s3-server.js';
import { rssMiB } from '../helpers/process-stats.js';
import { nbdPython, requireNbdPython } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { expectExportEquals, MiB, publish, serveS3 } from './s3-helpers.js';

const hasTools = requireTool('nbdinfo') && requireTool('nbdcopy') && requireNbdPython();
const N = 1 << 20; // 1 TiB of 1 MiB chunks
const V = '20261207T000000.000Z-0badcafe';
const EXPORTS = 20;
// The 70 MB JSON manifest takes more than the helpers' 3 s deadline on a loaded machine.
const SLOW = ['--s3-timeout', '30000'];

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A chunk is written to the cache after the read it served: wait for its file before stopping the server. */
async function cached(cacheDir: string, hash: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(path.join(cacheDir, 'chunks', hash)); i++) await new Promise((r) => setTimeout(r, 50));
  expect(existsSync(path.join(cacheDir, 'chunks', hash))).toBe(true);
}

/** sha256 of [offset, offset+length) of an export, read with libnbd. */
async function readSha(uri: string, offset: number, length: number): Promise<string> {
  const out = await nbdPython(
    'import nbd, hashlib\nh = nbd.NBD()\nh.connect_uri(URI)\nprint(hashlib.sha256(h.pread(LEN, OFF)).hexdigest())\nh.shutdown()',
    { URI: uri, OFF: offset, LEN: length },
  );
  return out.trim();
}

describe.runIf(hasTools)('compact manifests', () => {
  let s3: FaultS3Server;
  let tmp: TempDir;
  const first = randomBytes(MiB);
  const last = randomBytes(MiB);
  let json: Buffer;
  beforeAll(async () => {
    // The in-process StoreClient below: test credentials, no metadata service, 127.0.0.1 only.
    Object.assign(process.env, S3_ENV);
    s3 = await startFaultS3Server();
    tmp = makeTempDir('cownbd-s3-compact-');
    // A 1 TiB version: chunks 0 and N-1 stored for real, chunk 1 zero, the rest named but never read.
    const hashes = randomBytes(N * 32);
    const chunks: (string | null)[] = Array.from({ length: N }, (_, i) => hashes.toString('hex', i * 32, i * 32 + 32));
    chunks[0] = sha(first);
    chunks[1] = null;
    chunks[N - 1] = sha(last);
    s3.putObject('golden', `cownbd-chunks/sha256/${chunks[0]}`, first);
    s3.putObject('golden', `cownbd-chunks/sha256/${chunks[N - 1]}`, last);
    const doc = { format: 'cownbd-manifest', formatVersion: 1, version: V, created: '2026-12-07T00:00:00.000Z', virtualSize: N * MiB, chunkSize: MiB, hash: 'sha256', chunkPrefix: 'cownbd-chunks/sha256/', chunks };
    json = Buffer.from(JSON.stringify(doc));
    s3.putObject('golden', `big/manifests/${V}.json`, json);
  }, 60_000);
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('a 1 TiB image: the JSON is parsed once; restarts with the store down open the compact file (> 4× faster than the JSON); 20 exports of the version share one table', async () => {
    const cacheDir = tmp.file('cache-big');
    const exports = Array.from({ length: EXPORTS }, (_, i) => ['--export', `big${i}=s3://golden/big@${V}`]).flat();
    // Exports are opened at start-up: this start fetches and parses the JSON, and writes the compact file.
    const t = performance.now();
    const srv = await serveS3(s3, exports, cacheDir, SLOW);
    try {
      const coldMs = performance.now() - t;
      console.log(`server start with a cold 1 TiB manifest (70 MB JSON fetched, parsed, kept compact): ${coldMs.toFixed(0)} ms`);
      expect((await nbdinfoJson(srv.uri('big0'))).exports[0]!['export-size']).toBe(N * MiB);
      expect(await readSha(srv.uri('big0'), 0, MiB)).toBe(sha(first));
      expect(await readSha(srv.uri('big0'), (N - 1) * MiB, MiB)).toBe(sha(last));
      await cached(cacheDir, sha(first));
      await cached(cacheDir, sha(last));
    } finally {
      await srv.stop();
    }
    const [id] = readdirSync(path.join(cacheDir, 'manifests'));
    const file = path.join(cacheDir, 'manifests', id!, `${V}.cmf`);
    expect(readFileSync(file).length).toBeLessThan(N * 32 + 512); // 32 bytes a chunk, not 67 of JSON

    await s3.stop();
    try {
      // Open from disk, store down: a fresh manifest cache (as a restarted process has), timed
      // against parsing the published JSON (what every open cost before), in the same process and load.
      const log = createLogger({ level: 'error' });
      const client = new StoreClient({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, maxParallelGets: 4, requestTimeoutMs: 500, deadlineMs: 1000, maxAttempts: 1 }, log);
      const times: number[] = [];
      const jsonTimes: number[] = [];
      for (let i = 0; i < 3; i++) {
        let t = performance.now();
        const { manifest } = await new ManifestCache(client, cacheDir, log).resolve(`s3://golden/big@${V}`);
        times.push(performance.now() - t);
        expect(manifest.virtualSize).toBe(N * MiB);
        if (i > 0) continue; // one JSON parse is seconds of CPU: once is enough, the suite runs in parallel
        t = performance.now();
        decodeManifest(json, 'json');
        jsonTimes.push(performance.now() - t);
      }
      client.close();
      const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[1]!;
      console.log(`1 TiB image: open from its compact manifest ${times.map((x) => x.toFixed(0)).join(', ')} ms (median ${median(times).toFixed(0)}); JSON parse ${jsonTimes.map((x) => x.toFixed(0)).join(', ')} ms`);
      // Lightly loaded this is ~100 ms (docs/object-store.md); the test machine is shared by many
      // jobs, so the bound asserted is relative to the JSON parse under the same load.
      expect(Math.min(...times) * 4).toBeLessThan(jsonTimes[0]!); // the best of three: load spikes only ever add
      expect(Math.min(...times)).toBeLessThan(1000);

      // A restarted server serves it with the store down; RSS does not grow by a manifest per export.
      const again = await serveS3(s3, exports, cacheDir, SLOW);
      try {
        expect(await readSha(again.uri('big0'), 0, MiB)).toBe(sha(first));
        const one = rssMiB(again.proc.pid!);
        for (let i = 1; i < EXPORTS; i++) expect((await nbdinfoJson(again.uri(`big${i}`))).exports[0]!['export-size']).toBe(N * MiB);
        expect(await readSha(again.uri(`big${EXPORTS - 1}`), (N - 1) * MiB, MiB)).toBe(sha(last));
        const all = rssMiB(again.proc.pid!);
        console.log(`RSS with 1 export open: ${one.toFixed(0)} MiB; with ${EXPORTS}: ${all.toFixed(0)} MiB`);
        expect(all - one).toBeLessThan(64); // one table is 32 MiB; a copy per export would be 600+
      } finally {
        await again.stop();
      }
    } finally {
      await s3.start();
    }
  }, 180_000);

  it('a cache file of an earlier release (VERSION.mf: header line + JSON) serves with the store down and is converted', async () => {
    const img = createRawImage(tmp.file('small.raw'), 2 * MiB, [[0, 2 * MiB]], 91);
    const { version } = await publish(s3, img, 's3://golden/small');
    const published = s3.object('golden', `small/manifests/${version}.json`)!;
    const cacheDir = tmp.file('cache-legacy');
    const args = ['--export', `small=s3://golden/small@${version}`];
    const srv = await serveS3(s3, args, cacheDir);
    try {
      await expectExportEquals(srv.uri('small'), img, tmp.file('small1.out'));
      for (let i = 0; i < 2; i++) await cached(cacheDir, sha(readFileSync(img).subarray(i * MiB, (i + 1) * MiB)));
    } finally {
      await srv.stop();
    }
    // Replace the compact file by what the previous release wrote.
    const folder = path.join(cacheDir, 'manifests', createHash('sha256').update('golden/small').digest('hex').slice(0, 32));
    rmSync(path.join(folder, `${version}.cmf`));
    writeFileSync(path.join(folder, `${version}.mf`), Buffer.concat([Buffer.from(`cownbd-manifest-cache 1 golden/small ${sha(published)}\n`), published]));
    await s3.stop();
    try {
      const again = await serveS3(s3, args, cacheDir);
      try {
        await expectExportEquals(again.uri('small'), img, tmp.file('small2.out'));
      } finally {
        await again.stop();
      }
    } finally {
      await s3.start();
    }
    expect(existsSync(path.join(folder, `${version}.cmf`))).toBe(true);
    expect(existsSync(path.join(folder, `${version}.mf`))).toBe(false);
  }, 120_000);

  it('20 per-machine overlays over one 100 GiB version: RSS does not grow by a manifest per overlay', async () => {
    const n = 100 * 1024;
    const v = '20261207T000000.000Z-0000beef';
    const hashes = randomBytes(n * 32);
    const chunks = Array.from({ length: n }, (_, i) => hashes.toString('hex', i * 32, i * 32 + 32));
    const doc = { format: 'cownbd-manifest', formatVersion: 1, version: v, created: '2026-12-07T00:00:00.000Z', virtualSize: n * MiB, chunkSize: MiB, hash: 'sha256', chunkPrefix: 'cownbd-chunks/sha256/', chunks };
    s3.putObject('golden', `hundred/manifests/${v}.json`, Buffer.from(JSON.stringify(doc)));
    const srv = await serveS3(s3, ['--base', `s3://golden/hundred@${v}`, '--overlay-dir', tmp.file('ov-rss')], tmp.file('cache-rss'), SLOW);
    try {
      expect((await nbdinfoJson(srv.uri('vm0'))).exports[0]!['export-size']).toBe(n * MiB);
      const one = rssMiB(srv.proc.pid!);
      for (let i = 1; i < 20; i++) expect((await nbdinfoJson(srv.uri(`vm${i}`))).exports[0]!['export-size']).toBe(n * MiB);
      const all = rssMiB(srv.proc.pid!);
      console.log(`100 GiB version: RSS with 1 overlay ${one.toFixed(0)} MiB, with 20: ${all.toFixed(0)} MiB`);
      // One table is 3.2 MiB; issue 21 measured 164 → 493 MiB for 20 overlays before manifests were shared.
      expect(all - one).toBeLessThan(40);
    } finally {
      await srv.stop();
    }
  }, 120_000);
});
