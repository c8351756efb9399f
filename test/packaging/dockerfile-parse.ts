/**
 * A small Dockerfile reader for the packaging tests: enough of the syntax to check that
 * the Dockerfile stays in step with the build (no Docker engine needed).
 *
 *   parseDockerfile(text) → stages [{ name, from, instructions: [{ keyword, args, line }] }]
 *
 * Handles comments, parser directives, `\` line continuations and JSON ("exec form")
 * arguments. It is not a full Dockerfile parser (no heredocs, no ARG substitution):
 * parseDockerfile throws on what it does not understand, so the test fails loudly
 * instead of checking less than it claims.
 */

export interface Instruction {
  readonly keyword: string;
  /** Raw argument text (continuations joined with a space). */
  readonly args: string;
  /** 1-based line of the keyword. */
  readonly line: number;
}

export interface Stage {
  readonly index: number;
  readonly name?: string;
  readonly from: string;
  readonly instructions: Instruction[];
}

export function parseInstructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split('\n');
  let current: { keyword: string; args: string; line: number } | undefined;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const trimmed = raw.trim();
    if (!current && (trimmed === '' || trimmed.startsWith('#'))) continue;
    if (current && trimmed.startsWith('#')) continue; // comment lines inside a continuation
    const continued = trimmed.endsWith('\\');
    const body = continued ? trimmed.slice(0, -1).trim() : trimmed;
    if (!current) {
      const m = /^([A-Za-z]+)\s*(.*)$/.exec(body);
      if (!m) throw new Error(`Dockerfile line ${i + 1}: cannot parse "${raw}"`);
      if (/<</.test(m[2]!)) throw new Error(`Dockerfile line ${i + 1}: heredocs are not supported by this checker`);
      current = { keyword: m[1]!.toUpperCase(), args: m[2]!, line: i + 1 };
    } else if (body) {
      current.args = current.args ? `${current.args} ${body}` : body;
    }
    if (!continued) {
      out.push(current);
      current = undefined;
    }
  }
  if (current) throw new Error(`Dockerfile ends inside a line continuation (line ${current.line})`);
  return out;
}

export function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  for (const ins of parseInstructions(text)) {
    if (ins.keyword === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m) throw new Error(`FROM at line ${ins.line}: cannot parse "${ins.args}"`);
      stages.push({ index: stages.length, from: m[1]!, name: m[2], instructions: [] });
    } else {
      const stage = stages[stages.length - 1];
      if (!stage) throw new Error(`${ins.keyword} at line ${ins.line} comes before any FROM`);
      stage.instructions.push(ins);
    }
  }
  return stages;
}

/** Exec-form (JSON array) arguments, or undefined for shell form. */
export function execForm(args: string): string[] | undefined {
  if (!args.trim().startsWith('[')) return undefined;
  const v = JSON.parse(args) as unknown;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw new Error(`not a JSON string array: ${args}`);
  return v;
}

export interface CopyInstruction {
  readonly from?: string;
  readonly sources: string[];
  readonly dest: string;
  readonly line: number;
}

/** COPY/ADD: flags (--from=, --chown=, ...), sources and destination. */
export function parseCopy(ins: Instruction): CopyInstruction {
  const json = execForm(ins.args);
  let words = json ?? ins.args.split(/\s+/).filter(Boolean);
  let from: string | undefined;
  while (words[0]?.startsWith('--')) {
    const flag = words[0];
    if (flag.startsWith('--from=')) from = flag.slice('--from='.length);
    words = words.slice(1);
  }
  if (words.length < 2) throw new Error(`${ins.keyword} at line ${ins.line} needs a source and a destination`);
  return { from, sources: words.slice(0, -1), dest: words[words.length - 1]!, line: ins.line };
}
