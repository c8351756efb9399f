/**
 * The repository explains itself: comments, help texts and docs may only cite documents
 * that are in the repository, and every `docs/FILE.md#anchor` they cite must exist.
 *
 * Scanned: src/, test/, scripts/, docs/ and README.md. Checked:
 *   1. no citation of the team's private notes (their names are assembled below so this
 *      file does not cite them itself) and no "§" section numbers or bare "P11"-style
 *      decision numbers, which only made sense next to those notes;
 *   2. every `NAME.md` mentioned exists in the repository (by relative path when a path is
 *      given, else by file name); URLs are not checked;
 *   3. every `docs/FILE.md#anchor`, and every markdown link `](FILE.md#anchor)` / `](#anchor)`
 *      inside docs/ and README.md, names an anchor of that file: an explicit
 *      `<a id="…">` or the GitHub slug of a heading.
 * The checker functions are exercised on synthetic text first, so the test can fail.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
const SELF = path.relative(ROOT, import.meta.filename);
const SCANNED_DIRS = ['src', 'test', 'scripts', 'docs'];
const SKIP_DIRS = new Set(['node_modules', 'dist', 'build', '.git', 'coverage']);
const TEXT_EXT = /\.(ts|js|mjs|cjs|sh|md|json|toml|ya?ml|c|h|txt)$/;

/** Private notes the code once cited (names split so this file does not match itself). */
const PRIVATE_NOTES = ['cow-' + 'formats.md', 'nbd-' + 'protocol.md', 'style' + '.md', 'proto' + '.md', 'HELPERS' + '.md'];

function walk(dir: string, out: string[]): string[] {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (SKIP_DIRS.has(entry.name)) continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full, out);
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

/** Every .md file of the repository, as repo-relative paths. */
function repoMarkdown(): Set<string> {
  return new Set(walk(ROOT, []).filter((f) => f.endsWith('.md')).map((f) => path.relative(ROOT, f)));
}

function scannedFiles(): string[] {
  const files = SCANNED_DIRS.flatMap((d) => walk(path.join(ROOT, d), [])).filter((f) => TEXT_EXT.test(f));
  files.push(path.join(ROOT, 'README.md'));
  return files.map((f) => path.relative(ROOT, f)).filter((f) => f !== SELF);
}

export interface Finding {
  readonly file: string;
  readonly line: number;
  readonly message: string;
}

function lineOf(text: string, index: number): number {
  return text.slice(0, index).split('\n').length;
}

/** Rule 1: private notes, "§" and bare P-numbers. */
export function privateCitations(file: string, text: string): Finding[] {
  const found: Finding[] = [];
  for (const name of PRIVATE_NOTES) {
    for (let i = text.indexOf(name); i !== -1; i = text.indexOf(name, i + 1)) {
      // "proto.md" inside a longer name (e.g. "myproto.md") is someone else's file.
      if (i > 0 && /[\w-]/.test(text[i - 1]!)) continue;
      found.push({ file, line: lineOf(text, i), message: `cites ${name}, which is not in the repository` });
    }
  }
  for (const m of text.matchAll(/§|\bP(?:1\d|20|[1-9])\b/g)) {
    found.push({ file, line: lineOf(text, m.index), message: `"${m[0]}" refers to a section or decision number outside the repository` });
  }
  return found;
}

/** Rule 2: every NAME.md mentioned exists (URLs excluded). */
export function missingMarkdown(file: string, text: string, existing: ReadonlySet<string>): Finding[] {
  const found: Finding[] = [];
  const basenames = new Set([...existing].map((p) => path.basename(p)));
  const withoutUrls = text.replace(/\bhttps?:\/\/\S+/g, (u) => ' '.repeat(u.length));
  for (const m of withoutUrls.matchAll(/[\w./-]*[\w-]+\.md\b/g)) {
    const cited = m[0].replace(/^\.\//, '');
    const ok = cited.includes('/')
      ? existing.has(path.normalize(cited)) || existing.has(path.normalize(path.join(path.dirname(file), cited)))
      : basenames.has(cited);
    if (!ok) found.push({ file, line: lineOf(text, m.index), message: `cites ${cited}, which does not exist in the repository` });
  }
  return found;
}

/** GitHub's heading slug: lower case, punctuation dropped, spaces to hyphens. */
export function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

/** Anchors a markdown file defines: explicit ids and heading slugs. */
export function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  for (const m of markdown.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) anchors.add(m[1]!);
  let inFence = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) inFence = !inFence;
    const h = !inFence && /^#{1,6}\s+(.*)$/.exec(line);
    if (h) anchors.add(slug(h[1]!));
  }
  return anchors;
}

/** Rule 3: docs/FILE.md#anchor anywhere; ](FILE.md#anchor) and ](#anchor) in markdown. */
export function missingAnchors(file: string, text: string, anchorsFor: (doc: string) => Set<string> | undefined): Finding[] {
  const found: Finding[] = [];
  const check = (doc: string, anchor: string, index: number): void => {
    const anchors = anchorsFor(doc);
    if (!anchors) found.push({ file, line: lineOf(text, index), message: `cites ${doc}#${anchor}, but ${doc} does not exist` });
    else if (!anchors.has(anchor)) found.push({ file, line: lineOf(text, index), message: `cites ${doc}#${anchor}, but ${doc} has no such anchor` });
  };
  for (const m of text.matchAll(/(?<![\w/.-])(docs\/[\w./-]+\.md)#([\w-]+)/g)) check(m[1]!, m[2]!, m.index);
  if (file.endsWith('.md')) {
    for (const m of text.matchAll(/\]\(([\w./-]*)#([\w-]+)\)/g)) {
      const target = m[1] ? path.normalize(path.join(path.dirname(file), m[1])) : file;
      // docs/ citations were checked above; a link written `docs/x.md#y` from README resolves the same.
      if (m[1] && /^docs\//.test(m[1]) && path.dirname(file) === '.') continue;
      check(target, m[2]!, m.index);
    }
  }
  return found;
}

function anchorLookup(): (doc: string) => Set<string> | undefined {
  const cache = new Map<string, Set<string> | undefined>();
  return (doc) => {
    if (!cache.has(doc)) {
      const full = path.join(ROOT, doc);
      let anchors: Set<string> | undefined;
      try {
        if (statSync(full).isFile()) anchors = anchorsOf(readFileSync(full, 'utf8'));
      } catch {
        anchors = undefined;
      }
      cache.set(doc, anchors);
    }
    return cache.get(doc);
  };
}

const show = (fs: readonly Finding[]): string[] => fs.map((f) => `${f.file}:${f.line}: ${f.message}`);

describe('the checker itself', () => {
  const existing = new Set(['README.md', 'docs/cow-format.md', 'scripts/e2e/README.md']);

  it('flags private notes, section signs and bare decision numbers', () => {
    const text = `// see ${PRIVATE_NOTES[0]} §1.2 and P11\n// (P3) too\n// p99 latency, P99, CP11 and myproto.md are fine`;
    expect(show(privateCitations('src/x.ts', text))).toEqual([
      `src/x.ts:1: cites ${PRIVATE_NOTES[0]}, which is not in the repository`,
      'src/x.ts:1: "§" refers to a section or decision number outside the repository',
      'src/x.ts:1: "P11" refers to a section or decision number outside the repository',
      'src/x.ts:2: "P3" refers to a section or decision number outside the repository',
    ]);
  });

  it('flags markdown files that do not exist, resolving paths and ignoring URLs', () => {
    const text = 'docs/cow-format.md, README.md, e2e/README.md, notes.md, docs/gone.md, https://example.com/x/other.md';
    expect(show(missingMarkdown('scripts/x.sh', text, existing))).toEqual([
      'scripts/x.sh:1: cites notes.md, which does not exist in the repository',
      'scripts/x.sh:1: cites docs/gone.md, which does not exist in the repository',
    ]);
  });

  it('knows explicit ids and GitHub heading slugs', () => {
    const md = '# Title\n<a id="c11"></a>\n### C11. Sectors past a short v1/v2 bitmap\n```\n# not a heading\n```\n## The `add-cow` format!\n';
    expect([...anchorsOf(md)].sort()).toEqual(['c11', 'c11-sectors-past-a-short-v1v2-bitmap', 'the-add-cow-format', 'title']);
  });

  it('flags anchors that a cited docs file does not define', () => {
    const anchors = (doc: string) => (doc === 'docs/cow-format.md' ? new Set(['c11', 'v3']) : undefined);
    const text = '// docs/cow-format.md#c11 docs/cow-format.md#c99 docs/nope.md#x';
    expect(show(missingAnchors('src/y.ts', text, anchors))).toEqual([
      'src/y.ts:1: cites docs/cow-format.md#c99, but docs/cow-format.md has no such anchor',
      'src/y.ts:1: cites docs/nope.md#x, but docs/nope.md does not exist',
    ]);
    const md = 'see [v3](#v3), [gone](#gone) and [c11](cow-format.md#c11)';
    expect(show(missingAnchors('docs/cow-format.md', md, anchors))).toEqual([
      'docs/cow-format.md:1: cites docs/cow-format.md#gone, but docs/cow-format.md has no such anchor',
    ]);
  });
});

describe('the repository is self-contained', () => {
  const files = scannedFiles();
  const existing = repoMarkdown();
  const anchors = anchorLookup();
  const texts = files.map((f) => [f, readFileSync(path.join(ROOT, f), 'utf8')] as const);

  it('scans the source, tests, scripts and docs', () => {
    expect(files).toContain('src/formats/cow/cow-header.ts');
    expect(files).toContain('docs/cow-format.md');
    expect(files).toContain('README.md');
    expect(files.length).toBeGreaterThan(100);
  });

  it('cites no document outside the repository', () => {
    expect(show(texts.flatMap(([f, t]) => privateCitations(f, t)))).toEqual([]);
  });

  it('every markdown file it mentions exists', () => {
    expect(show(texts.flatMap(([f, t]) => missingMarkdown(f, t, existing)))).toEqual([]);
  });

  it('every docs anchor it cites exists', () => {
    expect(show(texts.flatMap(([f, t]) => missingAnchors(f, t, anchors)))).toEqual([]);
  });

  it('src/ cites the format and protocol docs by anchor', () => {
    const src = texts.filter(([f]) => f.startsWith('src/')).map(([, t]) => t).join('\n');
    for (const doc of ['docs/cow-format.md#', 'docs/add-cow-format.md#', 'docs/protocol.md#']) expect(src).toContain(doc);
  });
});
