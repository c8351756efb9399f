/**
 * cownbd as a library, through the package's front door: docs/library.md ("Using cownbd from
 * code") runs as written (its ```js block, saved as serve.mjs next to a disk.img) in a directory
 * whose node_modules/cownbd is this package, so `import { createServer } from 'cownbd'`
 * goes through package.json's "exports" map to the built dist/index.js. Real clients
 * read the export (nbdinfo for what INFO says, nbdcopy for every byte); Ctrl-C (SIGINT)
 * stops it through server.close().
 *
 * The library must leave the process alone: the example's only output is its own line,
 * and a program that builds, listens, serves and closes a server (with a config file and
 * an admin socket, so reload and the admin API start too) finds no signal handlers, no
 * V8 --expose-gc and nothing on stdout or stderr afterwards.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeResult, mustSucceed, nbdcopy, nbdinfo, type NbdinfoExport } from '../helpers/clients.js';
import { createRawImage, makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { REPO_ROOT, assertBuilt } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const hasNbdinfo = requireTool('nbdinfo');
const hasNbdcopy = requireTool('nbdcopy');
const SIZE = 3 * 1024 * 1024;

/** The first ```js block of docs/library.md ("# Using cownbd from code"). */
function readmeExample(): string {
  const text = readFileSync(path.join(REPO_ROOT, 'docs', 'library.md'), 'utf8');
  expect(text.startsWith('# Using cownbd from code\n'), 'docs/library.md is the "Using cownbd from code" page').toBe(true);
  const m = /^```js\n([\s\S]*?)^```$/m.exec(text);
  expect(m, 'that page has a ```js example').not.toBeNull();
  return m![1]!;
}

interface Program {
  readonly proc: ChildProcess;
  stdout(): string;
  stderr(): string;
  readonly exited: Promise<number | null>;
}

function runProgram(dir: string, file: string): Program {
  const proc = spawn(process.execPath, [file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return { proc, stdout: () => out, stderr: () => err, exited };
}

async function waitForLine(p: Program, re: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = re.exec(p.stdout());
    if (m) return m;
    if (p.proc.exitCode !== null || Date.now() > deadline) throw new Error(`no ${re} from the program\nstdout: ${p.stdout()}\nstderr: ${p.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('cownbd as a library (import from "cownbd")', () => {
  let tmp: TempDir;
  let img: string;
  const running: ChildProcess[] = [];

  beforeAll(() => {
    assertBuilt();
    tmp = makeTempDir('cownbd-lib-');
    // An installed cownbd as npm lays it out: node_modules/cownbd is the package itself.
    mkdirSync(tmp.file('node_modules'));
    symlinkSync(REPO_ROOT, tmp.file('node_modules/cownbd'), 'dir');
    img = createRawImage(tmp.file('disk.img'), SIZE, [[0, 65536], [SIZE - 4096, 4096]], 7);
  });
  afterAll(() => {
    for (const p of running) p.kill('SIGKILL');
    tmp.cleanup();
  });

  it.runIf(hasNbdinfo && hasNbdcopy)("docs/library.md's example serves disk.img to nbdinfo and nbdcopy, and Ctrl-C stops it", async () => {
    writeFileSync(tmp.file('serve.mjs'), readmeExample());
    const before = sha256File(img);
    const p = runProgram(tmp.path, 'serve.mjs');
    running.push(p.proc);
    const uri = (await waitForLine(p, /^(nbd:\/\/127\.0\.0\.1:\d+\/disk)$/m))[1]!;

    const info = mustSucceed(await nbdinfo(['--json', uri]));
    const exp = (JSON.parse(info.stdout) as { exports: NbdinfoExport[] }).exports[0]!;
    expect(exp['export-name']).toBe('disk');
    expect(exp['export-size']).toBe(SIZE);
    expect(exp['is_read_only'], describeResult(info)).toBe(true);
    const copy = tmp.file('copy.img');
    mustSucceed(await nbdcopy([uri, copy]));
    expect(sha256File(copy)).toBe(before);

    p.proc.kill('SIGINT');
    expect(await p.exited).toBe(0);
    // The library printed nothing of its own: the one line is the example's console.log.
    expect(p.stdout()).toBe(`${uri}\n`);
    expect(p.stderr()).toBe('');
    expect(sha256File(img)).toBe(before);
  });

  it('publishes only its API: deep imports are refused, package.json is readable', async () => {
    const probe = [
      "import { createServer, NbdServer, openImage, createImage, FORMATS, runInfo, FileIo } from 'cownbd';",
      "import pkg from 'cownbd/package.json' with { type: 'json' };",
      'const kinds = [createServer, NbdServer, openImage, createImage, runInfo, FileIo].map((f) => typeof f);',
      'let deep;',
      "try { await import('cownbd/dist/cli/serve-action.js'); deep = 'imported'; } catch (e) { deep = e.code; }",
      'console.log(JSON.stringify({ kinds, formats: FORMATS.map((f) => f.name), name: pkg.name, deep }));',
    ].join('\n');
    writeFileSync(tmp.file('probe.mjs'), probe);
    const p = runProgram(tmp.path, 'probe.mjs');
    expect(await p.exited, p.stderr()).toBe(0);
    const r = JSON.parse(p.stdout()) as { kinds: string[]; formats: string[]; name: string; deep: string };
    expect(r.kinds).toEqual(['function', 'function', 'function', 'function', 'function', 'function']);
    expect(r.formats).toEqual(expect.arrayContaining(['raw', 'cow', 'add-cow']));
    expect(r.name).toBe('cownbd');
    expect(r.deep).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
  });

  it.runIf(hasNbdinfo)('changes nothing process-wide: no signal handlers, no --expose-gc, no output', async () => {
    writeFileSync(tmp.file('cownbd.toml'), '[[export]]\nname = "disk"\npath = "disk.img"\nread-only = true\n');
    const program = [
      "import vm from 'node:vm';",
      "import { execFile } from 'node:child_process';",
      "import { promisify } from 'node:util';",
      "import { createServer } from 'cownbd';",
      "const signals = ['SIGHUP', 'SIGINT', 'SIGTERM'];",
      "const server = await createServer({ config: 'cownbd.toml', export: [{ name: 'disk', path: 'disk.img', readOnly: true }],",
      "  listen: [{ host: '127.0.0.1', port: 0 }], admin: { path: 'admin.sock' } });",
      'await server.listen();',
      "const size = (await promisify(execFile)('nbdinfo', ['--size', server.uri()])).stdout.trim();",
      "const reload = await server.reload('test');",
      'const listening = { handlers: signals.map((s) => process.listenerCount(s)), admin: Boolean(server.controlPlane?.api) };',
      'await server.close();',
      "const after = { handlers: signals.map((s) => process.listenerCount(s)), gc: vm.runInNewContext('typeof gc') };",
      "process.stderr.write(JSON.stringify({ size, unchanged: reload.unchanged, listening, after }) + '\\n');",
    ].join('\n');
    writeFileSync(tmp.file('quiet.mjs'), program);
    const p = runProgram(tmp.path, 'quiet.mjs');
    running.push(p.proc);
    expect(await p.exited, p.stderr()).toBe(0);
    // Everything on stdout would be the library's: nothing may be there.
    expect(p.stdout()).toBe('');
    const r = JSON.parse(p.stderr()) as { size: string; unchanged: string[]; listening: { handlers: number[]; admin: boolean }; after: { handlers: number[]; gc: string } };
    expect(r.size).toBe(String(SIZE));
    expect(r.unchanged).toEqual(['disk']);
    expect(r.listening).toEqual({ handlers: [0, 0, 0], admin: true });
    expect(r.after).toEqual({ handlers: [0, 0, 0], gc: 'undefined' });
  });
});
