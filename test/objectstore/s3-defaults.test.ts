/**
 * One object-store default for every command (issue 24): a command that meets an s3://
 * image or backing needs no --s3-endpoint when the operator said it once, either in
 * COWNBD_S3_ENDPOINT (read when the command runs) or in the [object-store] table of the
 * config file serve reads (`--config FILE` or COWNBD_CONFIG on the image and object-store
 * commands). Order: command line, then the config file, then COWNBD_S3_*, then AWS_*.
 * Real s3rver, real CLI; `info vm7.cow` is the case. Bad values name their source.
 *
 * `cache show` says which bound it shows: the one the running (or last) server recorded in
 * the cache directory, else this command's default.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mustSucceed, runTool } from '../helpers/clients.js';
import { createRawImage, makeTempDir, type TempDir } from '../helpers/images.js';
import { CLI_PATH } from '../helpers/server.js';
import { S3_ENV, startS3Server, type S3TestServer } from '../helpers/s3-server.js';
import { MiB, publish, serveS3 } from './s3-helpers.js';

/** The CLI with only the credentials in the environment: no --s3-endpoint, no AWS_ENDPOINT_URL. */
function bare(args: string[], env: Record<string, string> = {}) {
  return runTool(process.execPath, [CLI_PATH, ...args], { env: { ...S3_ENV, AWS_ENDPOINT_URL: '', AWS_ENDPOINT_URL_S3: '', COWNBD_S3_ENDPOINT: '', COWNBD_CONFIG: '', ...env } });
}

describe('object-store defaults shared by every command (s3rver)', () => {
  let s3: S3TestServer;
  let tmp: TempDir;
  let cow: string;
  let uri: string;
  beforeAll(async () => {
    s3 = await startS3Server();
    tmp = makeTempDir('cownbd-s3-defaults-');
    const img = createRawImage(tmp.file('g.raw'), 4 * MiB, [[0, MiB]], 7);
    uri = (await publish(s3, img, 's3://golden/g')).uri;
    cow = tmp.file('vm7.cow');
    mustSucceed(await bare(['create', '-f', 'cow', '-b', 's3://golden/g', cow, '--cache-dir', tmp.file('c'), ...s3.flags]));
  });
  afterAll(async () => {
    await s3?.close();
    tmp?.cleanup();
  });

  it('without any default, info over an s3:// backing cannot reach the store (the issue)', async () => {
    const r = await bare(['info', cow, '--json', '--cache-dir', tmp.file('c0'), '--s3-timeout', '1500', '--s3-retries', '0']);
    // The backing cannot be checked: AWS proper is not reachable from here.
    expect(`${r.stdout}${r.stderr}`).not.toContain('"sizeCheck": "ok"');
  });

  it('COWNBD_S3_ENDPOINT is the default of info, map and fsck', async () => {
    const env = { COWNBD_S3_ENDPOINT: s3.endpoint };
    const info = JSON.parse(mustSucceed(await bare(['info', cow, '--json', '--cache-dir', tmp.file('c1')], env)).stdout);
    expect(info.backing).toMatchObject({ stored: uri, exists: true, sizeCheck: 'ok', mtimeCheck: 'ok' });
    mustSucceed(await bare(['map', cow, '--cache-dir', tmp.file('c1')], env));
    mustSucceed(await bare(['fsck', 's3://golden/g', '--quick'], env));
  });

  it('the [object-store] table of the serve config file, by --config or COWNBD_CONFIG', async () => {
    const conf = tmp.file('cownbd.toml');
    writeFileSync(conf, `[object-store]\nendpoint = "${s3.endpoint}"\ncache-dir = "cache-from-config"\n`);
    const viaFlag = JSON.parse(mustSucceed(await bare(['info', cow, '--json', '--config', conf])).stdout);
    expect(viaFlag.backing).toMatchObject({ stored: uri, sizeCheck: 'ok' });
    const viaEnv = JSON.parse(mustSucceed(await bare(['info', cow, '--json'], { COWNBD_CONFIG: conf })).stdout);
    expect(viaEnv.backing).toMatchObject({ stored: uri, sizeCheck: 'ok' });
    // The file's cache-dir (relative to the file) was used: the chunk cache is there.
    const shown = JSON.parse(mustSucceed(await bare(['cache', 'show', '--json'], { COWNBD_CONFIG: conf })).stdout);
    expect(shown.dir).toBe(tmp.file('cache-from-config'));
    // The command line wins over the file, the file over the environment.
    const wrong = 'http://127.0.0.1:1';
    writeFileSync(tmp.file('wrong.toml'), `[object-store]\nendpoint = "${wrong}"\n`);
    const flagWins = JSON.parse(mustSucceed(await bare(['info', cow, '--json', '--config', tmp.file('wrong.toml'), '--s3-endpoint', s3.endpoint])).stdout);
    expect(flagWins.backing).toMatchObject({ sizeCheck: 'ok' });
    const fileWins = JSON.parse(mustSucceed(await bare(['info', cow, '--json', '--config', conf], { COWNBD_S3_ENDPOINT: wrong })).stdout);
    expect(fileWins.backing).toMatchObject({ sizeCheck: 'ok' });
  });

  it('bad defaults are one line naming where they came from', async () => {
    const env = await bare(['info', cow], { COWNBD_S3_ENDPOINT: 'minio:9000' });
    expect(env.code).toBe(1);
    expect(env.stderr.trim()).toBe('cownbd: COWNBD_S3_ENDPOINT must be an http(s):// URL (got "minio:9000")');
    const addressing = await bare(['info', cow], { COWNBD_S3_ENDPOINT: s3.endpoint, COWNBD_S3_ADDRESSING: 'dns' });
    expect(addressing.code).toBe(1);
    expect(addressing.stderr).toContain('COWNBD_S3_ADDRESSING must be path or virtual (got "dns")');
    const conf = tmp.file('bad.toml');
    writeFileSync(conf, '[object-store]\nendpoint = 9000\n');
    const file = await bare(['info', cow, '--config', conf]);
    expect(file.code).toBe(1);
    expect(file.stderr).toMatch(/bad\.toml:2: object-store\.endpoint/);
    const missing = await bare(['info', cow, '--config', tmp.file('nope.toml')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('nope.toml');
  });

  it("cache show prints the bound the running server recorded, and says so", async () => {
    const dir = tmp.file('shared-cache');
    const srv = await serveS3(s3, ['--export', `g=${uri}`], dir, ['--cache-size', '3G']);
    try {
      mustSucceed(await runTool('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 64k', srv.uri('g')]));
      const text = mustSucceed(await bare(['cache', 'show', '--cache-dir', dir])).stdout;
      expect(text).toMatch(new RegExp(`bound 3 GiB, set by the running server \\(pid ${srv.proc.pid}\\)`));
      const json = JSON.parse(mustSucceed(await bare(['cache', 'show', '--cache-dir', dir, '--json'])).stdout);
      expect(json).toMatchObject({ maxBytes: 3 * 1024 ** 3, bound: { source: 'running-server', pid: srv.proc.pid } });
    } finally {
      await srv.stop();
    }
    const after = mustSucceed(await bare(['cache', 'show', '--cache-dir', dir])).stdout;
    expect(after).toMatch(/bound 3 GiB, set by the last server \(pid \d+, not running\)/);
    const fresh = mustSucceed(await bare(['cache', 'show', '--cache-dir', tmp.file('never-served')])).stdout;
    expect(fresh).toMatch(/bound 10 GiB, this command's --cache-size \(no server has used this cache\)/);
  });
});
