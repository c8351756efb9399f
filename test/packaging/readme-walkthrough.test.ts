/**
 * The README, followed top to bottom as a new user would: every ```sh and ```console block
 * runs, in order, in one scratch directory, with `cownbd` on PATH (the built CLI). A block
 * that cannot run here says so right above its fence, visibly only in the source:
 *
 *   <!-- readme-test: skip: REASON -->    not run (VM boots, Docker, root/kernel setup, npm)
 *   <!-- readme-test: demo -->            run while `cownbd demo` serves (a free port is
 *                                         substituted for 10809)
 *   <!-- readme-test: servers -->         each `cownbd serve …` line is a long-running server:
 *                                         it runs with `-p 0` (unless it names -U/-p) and
 *                                         `--run 'nbdinfo --list "$uri"'`, so it starts, serves
 *                                         a client and stops
 *
 * ```console blocks run their `$ ` lines (the lines after them are sample output: sizes,
 * paths and mtimes differ per machine, so they are not compared). Absolute system paths in
 * commands (/run/…, /var/lib/cownbd/…) are redirected into the scratch directory. A command
 * that fails fails the test with the README line it came from.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { makeTempDir } from '../helpers/images.js';
import { CLI_PATH, REPO_ROOT, assertBuilt } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

export interface ReadmeBlock {
  /** 1-based line of the opening fence. */
  readonly line: number;
  readonly lang: string;
  readonly body: string[];
  /** The readme-test directive right above the fence, if any. */
  readonly directive?: string;
}

export function readmeBlocks(text: string): ReadmeBlock[] {
  const lines = text.split('\n');
  const blocks: ReadmeBlock[] = [];
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

/** Commands of a block: console `$ ` lines, or sh lines with `\` continuations joined. */
export function commandsOf(block: ReadmeBlock): string[] {
  const raw = block.lang === 'console' ? block.body.filter((l) => l.startsWith('$ ')).map((l) => l.slice(2)) : block.body;
  const out: string[] = [];
  let cur = '';
  for (const l of raw) {
    if (l.trimEnd().endsWith('\\')) {
      cur += `${l.trimEnd().slice(0, -1)} `;
      continue;
    }
    cur += l;
    if (cur.trim() && !cur.trim().startsWith('#')) out.push(cur);
    cur = '';
  }
  return out;
}

/** Drop a trailing ` # comment` (outside quotes). */
function stripComment(cmd: string): string {
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

const hasTools = ['nbdinfo', 'qemu-img', 'qemu-io', 'jq'].map((t) => requireTool(t)).every(Boolean);

/** Run a block; after `ms` its whole process group is killed (a server left in the foreground). */
function bash(script: string, cwd: string, env: Record<string, string>, ms = 60_000): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn('bash', ['-c', script], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const t = setTimeout(() => {
      out += `\n(timed out after ${ms} ms: killed)`;
      process.kill(-p.pid!, 'SIGKILL');
    }, ms);
    p.once('close', (status) => {
      clearTimeout(t);
      resolve({ status, out });
    });
  });
}

describe('README walk-through', () => {
  const tmp = makeTempDir('cownbd-readme-');
  afterAll(() => tmp.cleanup());
  const blocks = readmeBlocks(readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8'));

  it('every runnable block says whether and how it runs; skips give a reason', () => {
    const runnable = blocks.filter((b) => b.lang === 'sh' || b.lang === 'console');
    expect(runnable.length).toBeGreaterThan(10);
    for (const b of runnable) {
      if (b.directive === undefined) continue;
      expect(b.directive, `README line ${b.line}`).toMatch(/^(skip: \S.{5,}|demo|servers)$/);
    }
    // The walk-through runs most of them, not a token few.
    expect(runnable.filter((b) => !b.directive?.startsWith('skip')).length).toBeGreaterThanOrEqual(10);
  });

  it.runIf(hasTools)('runs the README from top to bottom', async () => {
    assertBuilt();
    const work = tmp.file('work');
    const bin = tmp.file('bin');
    mkdirSync(work);
    mkdirSync(bin);
    writeFileSync(path.join(bin, 'cownbd'), `#!/bin/sh\nexec "${process.execPath}" "${CLI_PATH}" "$@"\n`);
    chmodSync(path.join(bin, 'cownbd'), 0o755);
    const env = {
      PATH: `${bin}:${path.dirname(process.execPath)}:${process.env.PATH}`,
      XDG_CACHE_HOME: tmp.file('cache'),
      COWNBD_LOG_LEVEL: 'warn',
    };
    const redirect = (cmd: string) => cmd.replace(/(^|[\s=,])\/(run|var\/lib\/cownbd)\//g, `$1${tmp.path}/sys/$2/`);
    mkdirSync(tmp.file('sys/run'), { recursive: true });
    let ran = 0;
    for (const block of blocks) {
      if (block.lang !== 'sh' && block.lang !== 'console') continue;
      if (block.directive?.startsWith('skip')) continue;
      let cmds = commandsOf(block).map(redirect);
      let prologue = '';
      let epilogue = '';
      if (block.directive === 'servers') {
        cmds = cmds.map((c) => {
          if (!/^cownbd serve\b/.test(c)) return c;
          const listen = /\s(-U|-p|--socket|--port)\s/.test(c) ? '' : ' -p 0';
          return `${stripComment(c)}${listen} --run 'nbdinfo --list "$uri" >/dev/null'`;
        });
      }
      if (block.directive === 'demo') {
        prologue = `cownbd demo -p 0 --print-uri --exit-with-parent > demo.uri &\nDEMO=$!\nfor i in $(seq 100); do grep -q nbd demo.uri 2>/dev/null && break; sleep 0.1; done\nPORT=$(sed -n 's|^nbd://127.0.0.1:\\([0-9]*\\)/.*|\\1|p' demo.uri)\n`;
        cmds = cmds.map((c) => c.replaceAll('127.0.0.1:10809', '127.0.0.1:$PORT'));
        epilogue = '\nkill $DEMO; wait $DEMO || true';
      }
      // set -e, not pipefail: like an interactive shell, `check … | jq` is judged by jq.
      const script = `set -e\n${prologue}${cmds.map((c) => `${c}\n`).join('')}${epilogue}`;
      const r = await bash(script, work, env);
      expect(
        r.status,
        `README block at line ${block.line} failed (fix the example, or if it cannot run on a test machine put <!-- readme-test: skip: REASON --> above it):\n${script}\n--- output ---\n${r.out}`,
      ).toBe(0);
      ran++;
    }
    expect(ran).toBeGreaterThanOrEqual(10);
  }, 600_000);
});
