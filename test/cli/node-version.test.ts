/**
 * The installed binary refuses a Node.js older than package.json's `engines` with one line
 * (npm only warns with EBADENGINE; cownbd used to start on Node 20 and half-work).
 * The check runs before anything else loads (src/cli/node-version.ts).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { minimumMajor, nodeVersionProblem } from '../../src/cli/node-version.js';
import { makeTempDir } from '../helpers/images.js';
import { assertBuilt, CLI_PATH } from '../helpers/server.js';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

describe('Node.js version guard', () => {
  it('reads the lowest admitted major from an engines range', () => {
    expect(minimumMajor('>=22')).toBe(22);
    expect(minimumMajor('^22.3.0 || >=24')).toBe(22);
    expect(minimumMajor('*')).toBeUndefined();
    expect(nodeVersionProblem('20.20.2', '>=22')).toMatch(/needs Node\.js >=22.*this is Node\.js 20\.20\.2/);
    expect(nodeVersionProblem('22.0.0', '>=22')).toBeUndefined();
    expect(nodeVersionProblem('24.9.0', '>=22')).toBeUndefined();
  });

  it('the built CLI exits 1 with one line when engines asks for more than the running Node', () => {
    assertBuilt();
    // The real module, next to a package.json whose engines no Node meets, so this runs on any Node.
    const root = tmp.file('pkg');
    mkdirSync(path.join(root, 'dist', 'cli'), { recursive: true });
    copyFileSync(path.join(path.dirname(CLI_PATH), 'node-version.js'), path.join(root, 'dist', 'cli', 'node-version.js'));
    writeFileSync(path.join(root, 'package.json'), JSON.stringify({ type: 'module', engines: { node: '>=99' } }));
    const r = spawnSync(process.execPath, [path.join(root, 'dist', 'cli', 'node-version.js')], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^cownbd: cownbd needs Node\.js >=99 .*this is Node\.js \d+/);
    // And the pinned Node passes the real package.json's range.
    const ok = spawnSync(process.execPath, [CLI_PATH, '--version'], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    expect(ok.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('the whole CLI refuses the system Node when it is older than engines (Debian 12 ships 20)', () => {
    assertBuilt();
    const sys = spawnSync('/usr/bin/node', ['--version'], { encoding: 'utf8' });
    const major = Number(/^v(\d+)/.exec(sys.stdout ?? '')?.[1]);
    // Only meaningful where the system Node is old; the previous case covers every machine.
    if (!(major < 22)) return;
    const r = spawnSync('/usr/bin/node', [CLI_PATH, 'serve', '--help'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^cownbd: cownbd needs Node\.js >=22/);
  });
});
