/**
 * The docs walk-through's reading of console blocks and its output comparison, on synthetic
 * text: a shown line must match, `[...]` and `...` stand for what varies, and a sample that
 * shows more, less or other lines than printed is a mismatch.
 */
import { describe, expect, it } from 'vitest';
import { docBlocks, outputMismatch, stepsOf } from '../helpers/doc-blocks.js';

describe('doc blocks', () => {
  const text = [
    'intro',
    '<!-- readme-test: skip: needs a VM here -->',
    '```sh',
    'boot vm   # comment',
    '```',
    '```console',
    '$ echo a \\',
    '    b',
    'a b',
    '$ true',
    '$ printf "x\\ny\\n"',
    'x',
    'y',
    '',
    '```',
  ].join('\n');

  it('reads blocks, directives, commands with continuations and their shown output', () => {
    const blocks = docBlocks(text);
    expect(blocks.map((b) => [b.lang, b.line, b.directive])).toEqual([
      ['sh', 3, 'skip: needs a VM here'],
      ['console', 6, undefined],
    ]);
    expect(stepsOf(blocks[1]!)).toEqual([
      { cmd: 'echo a  b', line: 7, expected: ['a b'] },
      { cmd: 'true', line: 10, expected: [] },
      { cmd: 'printf "x\\ny\\n"', line: 11, expected: ['x', 'y'] },
    ]);
  });

  it('compares output: exact lines, [...] within a line, ... for lines', () => {
    expect(outputMismatch(['x', 'y'], 'x\ny\n')).toBeUndefined();
    expect(outputMismatch([], 'anything')).toBeUndefined();
    expect(outputMismatch(['port [...] open'], 'port 12345 open')).toBeUndefined();
    expect(outputMismatch(['a', '...', 'z'], 'a\nb\nc\nz')).toBeUndefined();
    expect(outputMismatch(['a', '...', 'z'], 'a\nz')).toBeUndefined();
    expect(outputMismatch(['a.b'], 'axb')).toMatch(/shown line 1/);
    expect(outputMismatch(['x', 'y'], 'x\nz')).toMatch(/shown: y\n {2}got: {3}z/);
    expect(outputMismatch(['x'], 'x\nextra')).toMatch(/shown line 2/);
    expect(outputMismatch(['x', 'y'], 'x')).toMatch(/got: {3}\(end\)/);
  });
});
