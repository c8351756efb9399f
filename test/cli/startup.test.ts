/**
 * Start-up cost of the CLI: a command loads only what it uses. cli/main.ts registers every
 * command, so before each action imported its implementation on demand, `--version` loaded
 * fastify, prom-client, zod, smol-toml, pino-pretty and cli-progress (~580 modules, twice
 * the bare Node RSS). Each case runs the real built CLI with test/helpers/record-modules.mjs,
 * which lists every module the process resolved, and names the heavy libraries it must not
 * contain.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, type TempDir } from '../helpers/images.js';
import { assertBuilt, CLI_PATH } from '../helpers/server.js';

const HOOK = path.resolve(import.meta.dirname, '../helpers/record-modules.mjs');

/** Libraries only some commands need: the admin API, config file, object store, progress bar, pretty logs. */
const HEAVY = ['fastify', 'prom-client', 'zod', 'smol-toml', 'pino-pretty', 'cli-progress', '@aws-sdk'];

let tmp: TempDir;
let n = 0;

/** Run the CLI; its exit status and the packages (node_modules/<name>) it loaded. */
function loaded(args: string[]): { status: number | null; stderr: string; packages: Set<string> } {
  assertBuilt();
  const log = tmp.file(`modules-${n++}.txt`);
  const r = spawnSync(process.execPath, ['--import', HOOK, CLI_PATH, ...args], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, COWNBD_MODULE_LOG: log },
  });
  const urls = readFileSync(log, 'utf8').split('\n');
  const packages = new Set(urls.flatMap((u) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u)?.[1] ?? []));
  // The recorder works: commander is what every command loads first.
  expect(packages.has('commander'), `no modules recorded for ${args.join(' ')}`).toBe(true);
  return { status: r.status, stderr: r.stderr, packages };
}

/** The heavy libraries among `packages` (@aws-sdk/* by its scope). */
function heavyIn(packages: Set<string>): string[] {
  return [...packages].filter((p) => HEAVY.some((h) => p === h || p.startsWith(`${h}/`))).sort();
}

beforeAll(() => {
  tmp = makeTempDir('cli-startup-');
  const raw = tmp.file('base.raw');
  const cli = (args: string[]) => {
    const r = spawnSync(process.execPath, [CLI_PATH, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cownbd ${args.join(' ')}: ${r.stderr}`);
  };
  cli(['create', raw, '4M']);
  cli(['create', '-f', 'cow', tmp.file('top.cow'), '--backing', raw]);
  cli(['create', '-f', 'add-cow', tmp.file('top.add-cow'), '--backing', raw, '--image', tmp.file('top.img')]);
});
afterAll(() => tmp.cleanup());

describe('CLI start-up loads only what the command uses', () => {
  it.each([
    [['--version']],
    [['--help']],
    [['serve', '--help']],
    [['ctl', '--help']],
    [['publish', '--help']],
  ])('%j loads none of the heavy libraries', (args) => {
    const r = loaded(args);
    expect(r.status).toBe(0);
    expect(heavyIn(r.packages)).toEqual([]);
  });

  it.each([
    ['info', 'top.cow', 0],
    ['map', 'top.cow', 0],
    ['check', 'top.cow', 0],
    ['info', 'top.add-cow', 0],
    ['check', 'top.add-cow', 0],
    ['info', 'base.raw', 0],
    ['map', 'base.raw', 0],
    // raw has no metadata to check: qemu-img's status 63.
    ['check', 'base.raw', 63],
  ])('%s %s (local image) loads none of the heavy libraries', (command, file, status) => {
    const r = loaded([command, tmp.file(file)]);
    expect(r.status, r.stderr).toBe(status);
    expect(heavyIn(r.packages)).toEqual([]);
  });

  it('serve without an admin endpoint or config file loads none of them (JSON logs: no pino-pretty)', () => {
    // -p 0: a free port; --run true: captive mode, the server stops when `true` exits.
    const r = loaded(['serve', '-p', '0', '-r', '--run', 'true', tmp.file('top.cow')]);
    expect(r.status, r.stderr).toBe(0);
    expect(heavyIn(r.packages)).toEqual([]);
  });

  it('serve with an admin endpoint does load fastify and prom-client (the recorder can see them)', () => {
    const r = loaded(['serve', '-p', '0', '-r', '--admin', `unix:${tmp.file('admin.sock')}`, '--run', 'true', tmp.file('top.cow')]);
    expect(r.status, r.stderr).toBe(0);
    expect(heavyIn(r.packages)).toEqual(expect.arrayContaining(['fastify', 'prom-client']));
  });
});
