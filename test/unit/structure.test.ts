/**
 * The shape of src/, enforced (issue 9), where dependency-cruiser cannot look: no file
 * over 400 lines, no function over 60 lines, and no comparison with a format name outside
 * src/formats/ (format knowledge lives in its record; everything else dispatches through
 * the registry). Import cycles and the layer rules are dependency-cruiser's
 * (.dependency-cruiser.cjs, run by scripts/test.sh; test/unit/layers.test.ts shows its
 * rules fail when broken). Functions are found with the TypeScript compiler API; the
 * format-name scan looks for the literal comparisons it forbids.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '../../src');
const MAX_FILE_LINES = 400;
const MAX_FUNCTION_LINES = 60;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

const files = sourceFiles(SRC);
const parsed = new Map(files.map((f) => [f, ts.createSourceFile(f, readFileSync(f, 'utf8'), ts.ScriptTarget.Latest, true)]));
const rel = (f: string): string => path.relative(SRC, f);

function functionName(node: ts.Node): string {
  const named = node as ts.Node & { name?: ts.Node };
  if (named.name) return named.name.getText();
  const parent = node.parent;
  if (parent && ts.isVariableDeclaration(parent)) return parent.name.getText();
  if (parent && ts.isPropertyAssignment(parent)) return parent.name.getText();
  if (parent && ts.isCallExpression(parent)) return `callback of ${parent.expression.getText().split('\n')[0]!.slice(-40)}`;
  return '(anonymous)';
}

function longFunctions(file: string): string[] {
  const sf = parsed.get(file)!;
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const first = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const last = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
      const lines = last - first + 1;
      if (lines > MAX_FUNCTION_LINES) out.push(`${rel(file)}:${first + 1} ${functionName(node)} is ${lines} lines`);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** `=== 'cow'`, `'raw' !==`, `case 'add-cow':` … with a format name as the literal. */
const FORMAT_NAME_TEST = /(?:[!=]==?\s*['"](?:raw|cow|add-cow|s3)['"])|(?:['"](?:raw|cow|add-cow|s3)['"]\s*[!=]==?)|(?:case\s+['"](?:raw|cow|add-cow|s3)['"]\s*:)/;

describe('source structure', () => {
  it(`has no file over ${MAX_FILE_LINES} lines`, () => {
    const long = files.map((f) => [rel(f), readFileSync(f, 'utf8').split('\n').length - 1] as const).filter(([, n]) => n > MAX_FILE_LINES);
    expect(long.map(([f, n]) => `${f}: ${n} lines`)).toEqual([]);
  });

  it(`has no function over ${MAX_FUNCTION_LINES} lines`, () => {
    expect(files.flatMap(longFunctions)).toEqual([]);
  });

  it('compares no format name outside src/formats/ (dispatch goes through the registry)', () => {
    const hits: string[] = [];
    for (const f of files) {
      if (rel(f).startsWith(`formats${path.sep}`)) continue;
      readFileSync(f, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (FORMAT_NAME_TEST.test(line)) hits.push(`${rel(f)}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(hits).toEqual([]);
    expect(FORMAT_NAME_TEST.test("if (format === 'cow') {")).toBe(true);
    expect(FORMAT_NAME_TEST.test("    case 'add-cow':")).toBe(true);
    expect(FORMAT_NAME_TEST.test("const x = { format: 'cow' };")).toBe(false);
  });
});
