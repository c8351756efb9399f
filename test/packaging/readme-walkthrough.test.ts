/**
 * The README and every docs/*.md page, followed top to bottom as a new user would: every ```sh
 * and ```console block of a file runs, in order, in one scratch directory of its own, with
 * `cownbd` on PATH (the built CLI); README.md first, then docs/ by name. What a console block
 * shows after a `$ ` command is compared with what the command printed (stdout and stderr;
 * `[...]` and `...` lines stand for what varies: test/helpers/doc-blocks.ts has the convention).
 * A block that cannot run here says so right above its fence, visibly only in the source:
 *
 *   <!-- readme-test: skip: REASON -->    not run (VM boots, Docker, root/kernel setup, npm)
 *   <!-- readme-test: demo -->            run while `cownbd demo` serves (a free port is
 *                                         substituted for 10809, in commands and output)
 *   <!-- readme-test: servers -->         each `cownbd serve …` line is a long-running server:
 *                                         it runs with `-p 0` (unless it names -U/-p) and
 *                                         `--run 'nbdinfo --list "$uri"'`, so it starts, serves
 *                                         a client and stops
 *
 * Absolute system paths in commands (/run/…, /var/lib/cownbd/…) are redirected into the
 * scratch directory. A command that fails, or prints something else than shown, fails the
 * test with the file and line it came from.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { docBlocks, outputMismatch, stepsOf, stripComment, type DocBlock, type DocStep } from '../helpers/doc-blocks.js';
import { makeTempDir } from '../helpers/images.js';
import { CLI_PATH, REPO_ROOT, assertBuilt } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const hasTools = ['nbdinfo', 'qemu-img', 'qemu-io', 'jq'].map((t) => requireTool(t)).every(Boolean);

/** README.md, then docs/*.md by name: the order a reader follows the links. */
const FILES = ['README.md', ...readdirSync(path.join(REPO_ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];

/** Run a script; after `ms` its whole process group is killed (a server left in the foreground). */
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

const MARK = '@@docs-step';

/** The script of one block: each command announced by a marker line, stderr merged into stdout. */
function blockScript(block: DocBlock, steps: DocStep[], redirect: (cmd: string) => string): string {
  let cmds = steps.map((s) => redirect(s.cmd));
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
  const body = cmds.map((c, i) => `printf '\\n${MARK} %d@@\\n' ${i}\n${c}\n`).join('');
  return `set -e\nexec 2>&1\n${prologue}${body}${epilogue}`;
}

/** What each step printed, by the markers. */
function outputsOf(out: string): Map<number, string> {
  const parts = out.split(new RegExp(`\\n${MARK} (\\d+)@@\\n`));
  const by = new Map<number, string>();
  for (let i = 1; i + 1 < parts.length; i += 2) by.set(Number(parts[i]), parts[i + 1]!);
  return by;
}

describe('docs walk-through (README.md and docs/*.md)', () => {
  const tmp = makeTempDir('cownbd-docs-');
  afterAll(() => tmp.cleanup());
  const byFile = FILES.map((f) => ({ file: f, blocks: docBlocks(readFileSync(path.join(REPO_ROOT, f), 'utf8')) }));
  const runnable = (b: DocBlock) => b.lang === 'sh' || b.lang === 'console';

  it('every runnable block says whether and how it runs; skips give a reason', () => {
    let runs = 0;
    let compared = 0;
    for (const { file, blocks } of byFile) {
      // A `$ ` sample in a plain or other fence would be a sample nobody checks.
      for (const b of blocks.filter((x) => !runnable(x))) {
        expect(b.body.some((l) => l.startsWith('$ ')), `${file}:${b.line}: a \`$ \` sample belongs in a \`\`\`console block (or a skip with its reason)`).toBe(false);
      }
      for (const b of blocks.filter(runnable)) {
        if (b.directive !== undefined) expect(b.directive, `${file}:${b.line}`).toMatch(/^(skip: \S.{5,}|demo|servers)$/);
        if (b.directive?.startsWith('skip')) continue;
        runs++;
        compared += stepsOf(b).filter((s) => s.expected.length > 0).length;
      }
    }
    // The walk-through runs most of them, and checks what they print, not a token few.
    expect(runs).toBeGreaterThanOrEqual(12);
    expect(compared).toBeGreaterThanOrEqual(15);
  });

  it.runIf(hasTools).each(FILES)('runs %s from top to bottom, output as shown', async (file) => {
    assertBuilt();
    const blocks = byFile.find((f) => f.file === file)!.blocks.filter((b) => runnable(b) && !b.directive?.startsWith('skip'));
    if (blocks.length === 0) return;
    const slug = file.replace(/\W/g, '_');
    const work = tmp.file(`${slug}/work`);
    const bin = tmp.file(`${slug}/bin`);
    const sys = tmp.file(`${slug}/sys`);
    mkdirSync(work, { recursive: true });
    mkdirSync(bin);
    mkdirSync(path.join(sys, 'run'), { recursive: true });
    writeFileSync(path.join(bin, 'cownbd'), `#!/bin/sh\nexec "${process.execPath}" "${CLI_PATH}" "$@"\n`);
    chmodSync(path.join(bin, 'cownbd'), 0o755);
    const env = {
      PATH: `${bin}:${path.dirname(process.execPath)}:${process.env.PATH}`,
      XDG_CACHE_HOME: tmp.file(`${slug}/cache`),
      COWNBD_LOG_LEVEL: 'warn',
    };
    const redirect = (cmd: string) => cmd.replace(/(^|[\s=,])\/(run|var\/lib\/cownbd)\//g, `$1${sys}/$2/`);
    const mismatches: string[] = [];
    for (const block of blocks) {
      let steps = stepsOf(block);
      // The demo runs on a free port: shown output naming 10809 names that port.
      if (block.directive === 'demo') steps = steps.map((st) => ({ ...st, expected: st.expected.map((l) => l.replaceAll('127.0.0.1:10809', '127.0.0.1:[...]')) }));
      const script = blockScript(block, steps, redirect);
      const r = await bash(script, work, env);
      const where = (line: number) => `${file}:${line}`;
      const outputs = outputsOf(r.out);
      expect(
        r.status,
        `${where(block.line)}: the block failed (fix the example, or if it cannot run on a test machine put <!-- readme-test: skip: REASON --> above it):\n${script}\n--- output ---\n${r.out}`,
      ).toBe(0);
      steps.forEach((s, i) => {
        const why = outputMismatch(s.expected, outputs.get(i) ?? '');
        if (why) mismatches.push(`${where(s.line)}: \`${s.cmd}\` printed something else than shown:\n${why}\n--- printed ---\n${outputs.get(i) ?? ''}`);
      });
    }
    // Every sample of the file is reported at once: one run shows every stale sample.
    expect(mismatches.join('\n\n')).toBe('');
  }, 300_000);
});
