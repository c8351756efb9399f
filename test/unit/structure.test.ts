/**
 * The shape of src/, enforced (issue 9): no runtime import cycle (static imports,
 * re-exports and dynamic import(); type-only imports are erased and do not count), no
 * file over 400 lines, no function over 60 lines, and no comparison with a format name
 * outside src/formats/ (format knowledge lives in its record; everything else dispatches
 * through the registry). Parsed with the TypeScript compiler API, not with regexes, except
 * the format-name scan, which looks for the literal comparisons it forbids.
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

/** Imports that exist at run time: not `import type`, not a clause of type-only names. */
function isRuntimeImport(node: ts.ImportDeclaration): boolean {
  const clause = node.importClause;
  if (!clause) return true; // side-effect import
  if (clause.isTypeOnly) return false;
  if (clause.name) return true;
  const bindings = clause.namedBindings;
  if (!bindings || ts.isNamespaceImport(bindings)) return true;
  return bindings.elements.length === 0 || bindings.elements.some((e) => !e.isTypeOnly);
}

function resolveSpecifier(from: string, spec: string): string | undefined {
  if (!spec.startsWith('.')) return undefined; // packages and node: builtins
  const target = path.resolve(path.dirname(from), spec).replace(/\.js$/, '.ts');
  return parsed.has(target) ? target : undefined;
}

/** Runtime edges of one module: static imports, value re-exports, dynamic import('…'). */
function runtimeImports(file: string): string[] {
  const out: string[] = [];
  const add = (spec: string): void => {
    const target = resolveSpecifier(file, spec);
    if (target) out.push(target);
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier) && isRuntimeImport(node)) add(node.moduleSpecifier.text);
    if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier) && !node.isTypeOnly) {
      const named = node.exportClause && ts.isNamedExports(node.exportClause) ? node.exportClause.elements : undefined;
      if (!named || named.length === 0 || named.some((e) => !e.isTypeOnly)) add(node.moduleSpecifier.text);
    }
    if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const arg = node.arguments[0];
      if (arg && ts.isStringLiteralLike(arg)) add(arg.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(parsed.get(file)!);
  return out;
}

/** Strongly connected components with more than one module, or a module importing itself. */
function importCycles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const indexOf = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const connect = (v: string): void => {
    indexOf.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!indexOf.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, indexOf.get(w)!));
    }
    if (low.get(v) !== indexOf.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(scc.map(rel).sort());
  };
  for (const v of graph.keys()) if (!indexOf.has(v)) connect(v);
  return cycles;
}

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
  it('has no runtime import cycle (static, re-export or dynamic import)', () => {
    const graph = new Map(files.map((f) => [f, runtimeImports(f)]));
    expect(graph.size).toBeGreaterThan(50);
    // The walk sees edges of every kind (a regression guard for the parser itself).
    const edges = [...graph.values()].reduce((n, e) => n + e.length, 0);
    expect(edges).toBeGreaterThan(100);
    expect(importCycles(graph)).toEqual([]);
  });

  it('finds a cycle when there is one (the detector can fail)', () => {
    const g = new Map([
      ['/a', ['/b']],
      ['/b', ['/c']],
      ['/c', ['/a']],
      ['/d', ['/a']],
    ]);
    expect(importCycles(g)).toHaveLength(1);
    expect(importCycles(new Map([['/x', ['/x']]]))).toHaveLength(1);
    expect(importCycles(new Map([['/x', ['/y']], ['/y', []]]))).toEqual([]);
  });

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
