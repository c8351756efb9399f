/**
 * The shape of src/ (issue 9) is enforced by ESLint now (eslint.config.js, run by `npm run
 * lint` in scripts/test.sh): `max-lines` 400 per file, `max-lines-per-function` 60,
 * `no-restricted-syntax` against comparing a format name outside src/formats/ (format
 * knowledge lives in its record; everything else dispatches through the registry), and
 * `no-console` in library code. This file used to check the first three by hand; what is
 * left here is what ESLint cannot say about itself: that its config really fails on each
 * violation. A scratch project with the repository's eslint.config.js and tsconfig.json and
 * a src/ that breaks every rule on purpose is linted by the real eslint (as
 * test/unit/layers.test.ts does for dependency-cruiser), so a config that silently allows
 * everything cannot pass. Import cycles and layers are dependency-cruiser's.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/images.js';
import { REPO_ROOT } from '../helpers/server.js';

interface LintResult {
  readonly filePath: string;
  readonly messages: readonly { readonly ruleId: string | null; readonly line: number; readonly message: string }[];
}

const lines = (n: number, text: string): string => `${text}\n`.repeat(n);

const FIXTURE: Record<string, string> = {
  // 401 lines: one over the cap. (400 passes: tests the boundary.)
  'src/util/long-file.ts': `export const first = 1;\n${lines(400, '// filler')}`,
  'src/util/ok-file.ts': `export const first = 1;\n${lines(399, '// filler')}`,
  // A 61-line function and a 60-line one.
  'src/util/long-function.ts': `export function tooLong(): number {\n${lines(58, '  // filler')}  return 1;\n}\nexport function justFits(): number {\n${lines(57, '  // filler')}  return 1;\n}\n`,
  // Format names compared outside src/formats/; a format name as a value is fine.
  'src/server/format-leak.ts': [
    "export function leak(format: string): number {",
    "  if (format === 'cow') return 1;",
    "  if ('add-cow' !== format) return 2;",
    '  switch (format) {',
    "    case 's3':",
    '      return 3;',
    '  }',
    "  const fine = { format: 'cow' };",
    '  return fine.format.length;',
    '}',
    '',
  ].join('\n'),
  'src/formats/inside.ts': "export const isCow = (format: string): boolean => format === 'cow';\n",
  // Library code writes no console; the CLI may.
  'src/server/talks.ts': "export function talk(): void {\n  console.log('hello');\n}\n",
  'src/cli/talks.ts': "export function talk(): void {\n  console.log('hello');\n}\n",
  // A floating promise (type-aware rule): the violation this lint is mainly for.
  'src/control/floating.ts': 'async function later(): Promise<void> {}\nexport function start(): void {\n  later();\n}\n',
};

describe('eslint.config.js', () => {
  const tmp = makeTempDir('cownbd-lint-');
  afterAll(() => tmp.cleanup());

  it('reports each structure rule and a floating promise, and nothing else', () => {
    for (const [file, text] of Object.entries(FIXTURE)) {
      mkdirSync(path.dirname(tmp.file(file)), { recursive: true });
      writeFileSync(tmp.file(file), text);
    }
    for (const f of ['eslint.config.js', 'tsconfig.json', 'package.json']) copyFileSync(path.join(REPO_ROOT, f), tmp.file(f));
    symlinkSync(path.join(REPO_ROOT, 'node_modules'), tmp.file('node_modules'), 'dir');
    const bin = path.join(REPO_ROOT, 'node_modules', 'eslint', 'bin', 'eslint.js');
    const r = spawnSync(process.execPath, [bin, '--format', 'json', 'src'], { cwd: tmp.path, encoding: 'utf8', timeout: 90_000 });
    expect(r.status, r.stderr).toBe(1); // 1: problems found (2 would be a config or crash)
    const found = (JSON.parse(r.stdout) as LintResult[])
      .flatMap((f) => f.messages.map((m) => `${path.relative(tmp.path, f.filePath)}:${m.line} ${m.ruleId}`))
      .sort();
    expect(found).toEqual(
      [
        'src/util/long-file.ts:401 max-lines',
        'src/util/long-function.ts:1 max-lines-per-function',
        'src/server/format-leak.ts:2 no-restricted-syntax',
        'src/server/format-leak.ts:3 no-restricted-syntax',
        'src/server/format-leak.ts:5 no-restricted-syntax',
        'src/server/talks.ts:2 no-console',
        'src/control/floating.ts:3 @typescript-eslint/no-floating-promises',
      ].sort(),
    );
  }, 120_000);
});
