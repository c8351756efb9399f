/**
 * Reading the runnable examples out of README.md and docs/*.md, and judging what they print.
 *
 * The convention the docs follow (docs/development.md#the-docs-walk-through):
 *   ```sh        every line is a command (`\` continues a line, `#` lines are comments);
 *                only the exit status is judged.
 *   ```console   `$ ` lines are commands (a command ending in `\` continues on the next
 *                line); the lines after a command, up to the next `$ ` line, are what it
 *                prints (stdout and stderr, in order) and are compared. In a shown line
 *                `[...]` stands for any text (ports, times, absolute paths); a line that is
 *                only `...` stands for any number of lines. A command shown without output
 *                is not compared.
 *   <!-- readme-test: … --> right above a fence: `skip: REASON`, `demo`, `servers`
 *                (test/packaging/readme-walkthrough.test.ts says what each does).
 * Pure functions only: the walk-through test runs the commands.
 */

export interface DocBlock {
  /** 1-based line of the opening fence. */
  readonly line: number;
  readonly lang: string;
  readonly body: string[];
  /** The readme-test directive right above the fence, if any. */
  readonly directive?: string;
}

/** One command of a block and, in a console block, the output the docs show for it. */
export interface DocStep {
  readonly cmd: string;
  /** 1-based line of the command in the file. */
  readonly line: number;
  /** Shown output lines; empty: not compared. */
  readonly expected: string[];
}

export function docBlocks(text: string): DocBlock[] {
  const lines = text.split('\n');
  const blocks: DocBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    let j = i + 1;
    while (j < lines.length && !lines[j]!.startsWith('```')) j++;
    let k = i - 1;
    while (k >= 0 && lines[k]!.trim() === '') k--;
    const d = k >= 0 ? /^<!-- readme-test: (.*?) -->$/.exec(lines[k]!.trim()) : null;
    blocks.push({ line: i + 1, lang: open[1]!, body: lines.slice(i + 1, j), ...(d ? { directive: d[1]! } : {}) });
    i = j;
  }
  return blocks;
}

/** The commands of a block with the output shown for each (console blocks only). */
export function stepsOf(block: DocBlock): DocStep[] {
  const steps: { cmd: string; line: number; expected: string[] }[] = [];
  const body = block.body;
  for (let i = 0; i < body.length; i++) {
    const line = block.line + 1 + i;
    const l = body[i]!;
    if (block.lang === 'console' && !l.startsWith('$ ')) {
      steps.at(-1)?.expected.push(l);
      continue;
    }
    let cmd = block.lang === 'console' ? l.slice(2) : l;
    while (cmd.trimEnd().endsWith('\\') && i + 1 < body.length) {
      cmd = `${cmd.trimEnd().slice(0, -1)} ${body[++i]!.trim()}`;
    }
    if (cmd.trim() && !cmd.trim().startsWith('#')) steps.push({ cmd, line, expected: [] });
  }
  for (const s of steps) while (s.expected.length > 0 && s.expected.at(-1)!.trim() === '') s.expected.pop();
  return steps;
}

/** Drop a trailing ` # comment` (outside quotes). */
export function stripComment(cmd: string): string {
  let quote: string | undefined;
  for (let i = 0; i < cmd.length; i++) {
    const c = cmd[i]!;
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '#' && /\s/.test(cmd[i - 1] ?? ' ')) return cmd.slice(0, i).trimEnd();
  }
  return cmd;
}

function lineMatches(shown: string, actual: string): boolean {
  const re = shown
    .trimEnd()
    .split('[...]')
    .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${re}$`).test(actual.trimEnd());
}

/** Does `actual` match the shown lines? Returns undefined, or why not. */
export function outputMismatch(shown: readonly string[], actual: string): string | undefined {
  if (shown.length === 0) return undefined;
  const got = actual.replace(/\n+$/, '').split('\n');
  // Backtracking over `...` lines; docs samples are short, so this stays cheap.
  const match = (s: number, g: number): boolean => {
    if (s === shown.length) return g === got.length;
    if (shown[s]!.trim() === '...') {
      for (let k = g; k <= got.length; k++) if (match(s + 1, k)) return true;
      return false;
    }
    return g < got.length && lineMatches(shown[s]!, got[g]!) && match(s + 1, g + 1);
  };
  if (match(0, 0)) return undefined;
  let i = 0;
  while (i < shown.length && i < got.length && shown[i]!.trim() !== '...' && lineMatches(shown[i]!, got[i]!)) i++;
  return `first difference at shown line ${i + 1}:\n  shown: ${shown[i] ?? '(end)'}\n  got:   ${got[i] ?? '(end)'}`;
}
