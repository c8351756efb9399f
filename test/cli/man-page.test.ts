/**
 * `man cownbd`: the page `npm run build` writes (dist/cownbd.1, scripts/build-man.mjs) is
 * rendered by the real man(1) and groff, and says what `--help` says, because both come from
 * the one commander program: every command's usage line, every option of `serve --help` and
 * its examples are on the page, and a fresh rendering equals the built page (it is not stale).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/images.js';
import { CLI_PATH, REPO_ROOT, assertBuilt } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const PAGE = path.join(REPO_ROOT, 'dist', 'cownbd.1');
const hasMan = requireTool('man') && requireTool('groff');

function cli(...args: string[]): string {
  const r = spawnSync(process.execPath, [CLI_PATH, ...args], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

/** `man -l` output as plain text: wide enough that no option term is wrapped or hyphenated. */
function rendered(): string {
  const r = spawnSync('man', ['-l', PAGE], { encoding: 'utf8', env: { ...process.env, MANWIDTH: '250', MAN_KEEP_FORMATTING: '', MANPAGER: 'cat', PAGER: 'cat' } });
  expect(r.status, r.stderr).toBe(0);
  // Overstrike bold/underline if the pager path kept it.
  // eslint-disable-next-line no-control-regex -- \x08 is the backspace of nroff overstrike
  return r.stdout.replace(/.\x08/g, '').replace(/\u2010/g, '-');
}

/** The option terms of a --help text: "-p, --port <port>" etc. (two-space indented). */
function optionTerms(help: string): string[] {
  return [...help.matchAll(/^ {2}(-[^\s,]+(?:, --\S+)?(?: <[^>]+>| \[[^\]]+\])?)/gm)].map((m) => m[1]!);
}

describe('man page', () => {
  const tmp = makeTempDir('cownbd-man-');
  afterAll(() => tmp.cleanup());

  it('is built with the package (npm run build)', () => {
    assertBuilt();
    expect(existsSync(PAGE), `${PAGE} is missing: run \`npm run build\` (it runs scripts/build-man.mjs after tsc)`).toBe(true);
    const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { man?: string[]; scripts: Record<string, string> };
    // An array: npm's bin-links links only an array's pages into PREFIX/share/man (a string is ignored).
    expect(pkg.man).toEqual(['./dist/cownbd.1']);
    expect(pkg.scripts.build).toMatch(/scripts\/build-man\.mjs/);
  });

  it('is not stale: rendering the built program again gives the same page', () => {
    assertBuilt();
    const fresh = tmp.file('cownbd.1');
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'scripts', 'build-man.mjs'), fresh], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(fresh, 'utf8')).toBe(readFileSync(PAGE, 'utf8'));
  });

  it.runIf(hasMan)('groff reads it without a warning, and man -l renders it', () => {
    const g = spawnSync('groff', ['-ww', '-z', '-man', PAGE], { encoding: 'utf8' });
    expect(g.status).toBe(0);
    expect(g.stderr).toBe('');
    const text = rendered();
    expect(text).toMatch(/^COWNBD\(1\)/);
    expect(text).toContain(`cownbd - ${'NBD server for copy-on-write disk images'}`);
  });

  it.runIf(hasMan)('says what --help says: every command, every serve option, the examples', () => {
    const text = rendered();
    const commands = [...cli('--help').matchAll(/^ {2}([a-z][\w-]*) /gm)].map((m) => m[1]!).filter((c) => c !== 'help');
    expect(commands.length).toBeGreaterThanOrEqual(15);
    for (const c of commands) {
      const usage = /^Usage: (.*)$/m.exec(cli(c, '--help'))![1]!;
      expect(text, `usage of ${c}`).toContain(usage);
    }
    expect(text).toContain('cownbd cache show [options]');
    const serveHelp = cli('serve', '--help');
    const terms = optionTerms(serveHelp);
    expect(terms.length).toBeGreaterThanOrEqual(40);
    for (const t of terms) expect(text, t).toContain(t);
    for (const heading of ['Listening', 'Exports', 'Overlays', 'Security and limits', 'Object storage']) expect(text).toMatch(new RegExp(`^ +${heading}`, 'm'));
    const examples = serveHelp.slice(serveHelp.indexOf('Examples:'));
    for (const line of examples.split('\n').filter((l) => l.trim().startsWith('cownbd '))) expect(text).toContain(line.trim());
  });
});
