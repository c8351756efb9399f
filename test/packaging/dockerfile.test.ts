/**
 * The Dockerfile without a Docker engine: it passes a linter (dockerfilelint, an npm
 * devDependency that runs offline; the hadolint npm wrapper downloads a binary from
 * GitHub at run time, so it cannot be used here), and it stays in step with the build:
 *
 *   - every COPY source exists in the repo and is not excluded by .dockerignore;
 *   - every COPY --from=STAGE source is put there by that stage (a COPY, or a RUN that
 *     produces it: npm ci → node_modules, npm run build → dist (tsconfig.build.json
 *     outDir), scripts/build-native.sh / mkdir → build);
 *   - the build stage runs scripts/build-native.sh and `npm run build`;
 *   - the runtime stage is Node 24 slim, non-root USER, EXPOSE of the default port,
 *     a VOLUME, and an ENTRYPOINT running package.json "bin".cownbd with `serve`.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { DEFAULT_PORT } from '../../src/cli/serve-options.js';
import { REPO_ROOT } from '../helpers/server.js';
import { execForm, parseCopy, parseDockerfile, type Stage } from './dockerfile-parse.js';

const DOCKERFILE = path.join(REPO_ROOT, 'Dockerfile');
const LINTER = path.join(REPO_ROOT, 'node_modules', '.bin', 'dockerfilelint');

interface LintResult {
  files: Array<{ file: string; issues_count: number; issues: Array<{ line: string; title: string; description: string }> }>;
  totalIssues: number;
}

function lint(target: string): LintResult {
  const r = spawnSync(process.execPath, [LINTER, '--json', target], { encoding: 'utf8', timeout: 30_000, cwd: REPO_ROOT });
  if (!r.stdout.trim().startsWith('{')) throw new Error(`dockerfilelint failed (status ${r.status}): ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as LintResult;
}

const text = readFileSync(DOCKERFILE, 'utf8');
const stages = parseDockerfile(text);
const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as {
  bin: Record<string, string>;
  scripts: Record<string, string>;
  devDependencies: Record<string, string>;
};

function stageByName(name: string): Stage {
  const s = stages.find((st) => st.name === name) ?? stages[Number(name)];
  if (!s) throw new Error(`COPY --from=${name}: no such stage`);
  return s;
}

function args(stage: Stage, keyword: string): string[] {
  return stage.instructions.filter((i) => i.keyword === keyword).map((i) => i.args);
}

/** WORKDIR in effect at the end of a stage (absolute). */
function workdir(stage: Stage): string {
  let dir = '/';
  for (const w of args(stage, 'WORKDIR')) dir = path.posix.resolve(dir, w);
  return dir;
}

/** .dockerignore patterns (comments and blanks dropped, leading "/" and trailing "/" stripped). */
function dockerignore(): string[] {
  return readFileSync(path.join(REPO_ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.replace(/^\/+/, '').replace(/\/+$/, ''));
}

/** Does a .dockerignore pattern exclude `rel` (or a parent directory of it)? Simple globs only. */
function ignored(rel: string, patterns: string[]): boolean {
  const parts = rel.split('/');
  let excluded = false;
  for (const p of patterns) {
    const negate = p.startsWith('!');
    const pat = negate ? p.slice(1) : p;
    // eslint-disable-next-line no-control-regex -- \u0000 is a placeholder no pattern contains
    const re = new RegExp(`^${pat.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*\*/g, '\u0000').replace(/\*/g, '[^/]*').replace(/\u0000/g, '.*').replace(/\?/g, '[^/]')}$`);
    for (let n = 1; n <= parts.length; n++) {
      if (re.test(parts.slice(0, n).join('/'))) excluded = !negate;
    }
  }
  return excluded;
}

describe('Dockerfile', () => {
  it('uses the dockerfilelint devDependency, which catches real problems', () => {
    expect(pkg.devDependencies.dockerfilelint).toBeDefined();
    expect(existsSync(LINTER)).toBe(true);
    // Negative control: the linter is alive and judges its input.
    const bad = lint('FROM ubuntu\nRUN apt-get install curl\nEXPOSE 99999\n');
    expect(bad.totalIssues).toBeGreaterThanOrEqual(3);
    expect(bad.files[0]!.issues.map((i) => i.title)).toEqual(expect.arrayContaining(['Base Image Missing Tag', 'Invalid Port Exposed']));
  });

  it('passes dockerfilelint with no issues', () => {
    const r = lint(DOCKERFILE);
    expect(r.files[0]!.issues, JSON.stringify(r.files[0]!.issues, null, 2)).toEqual([]);
    expect(r.totalIssues).toBe(0);
  });

  it('is multi-stage: a build stage and a Node 24 slim runtime stage', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const runtime = stages[stages.length - 1]!;
    expect(runtime.from).toMatch(/^node:24[.\d]*-[a-z]+-slim$|^node:24[.\d]*-slim$/);
    for (const s of stages) expect(s.from, `stage ${s.name ?? s.index} pins its base image`).toMatch(/:/);
  });

  it('copies only sources that exist in the repo and are not .dockerignored', () => {
    const patterns = dockerignore();
    let checked = 0;
    for (const stage of stages) {
      for (const ins of stage.instructions.filter((i) => i.keyword === 'COPY' || i.keyword === 'ADD')) {
        const c = parseCopy(ins);
        if (c.from !== undefined) continue;
        for (const src of c.sources) {
          const rel = path.posix.normalize(src).replace(/\/$/, '');
          expect(existsSync(path.join(REPO_ROOT, rel)), `COPY ${src} (line ${c.line}) exists in the repo`).toBe(true);
          expect(ignored(rel, patterns), `COPY ${src} (line ${c.line}) is excluded by .dockerignore`).toBe(false);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThanOrEqual(5);
  });

  it('copies from earlier stages only what those stages produce', () => {
    const tsOutDir = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'tsconfig.build.json'), 'utf8')) as { compilerOptions: { outDir: string } })
      .compilerOptions.outDir;
    // What a RUN produces, recognised by the command that produces it.
    const producers: Array<[RegExp, string]> = [
      [/\bnpm (ci|install)\b/, 'node_modules'],
      [/\bnpm run build\b/, tsOutDir],
      [/scripts\/build-native\.sh|mkdir -p build\b/, 'build'],
    ];
    let checked = 0;
    for (const [si, stage] of stages.entries()) {
      for (const ins of stage.instructions.filter((i) => i.keyword === 'COPY')) {
        const c = parseCopy(ins);
        if (c.from === undefined) continue;
        const source = stageByName(c.from);
        expect(source.index, `COPY --from=${c.from} (line ${c.line}) names an EARLIER stage`).toBeLessThan(si);
        const wd = workdir(source);
        // Paths the source stage put in place: COPY destinations (with file names) and RUN products.
        const made = new Set<string>();
        for (const i of source.instructions) {
          if (i.keyword === 'COPY') {
            const cc = parseCopy(i);
            const dest = path.posix.resolve(wd, cc.dest);
            if (cc.dest.endsWith('/')) for (const s of cc.sources) made.add(path.posix.join(dest, path.posix.basename(s)));
            else made.add(dest);
          }
          if (i.keyword === 'RUN') for (const [re, product] of producers) if (re.test(i.args)) made.add(path.posix.resolve(wd, product));
        }
        for (const src of c.sources) {
          const abs = path.posix.resolve(wd, src).replace(/\/$/, '');
          expect([...made], `COPY --from=${c.from} ${src} (line ${c.line}) is produced by stage ${c.from}`).toContain(abs);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThanOrEqual(3);
  });

  it('builds the native addon and the TypeScript in the build stage', () => {
    const build = stages[0]!;
    const runs = args(build, 'RUN').join('\n');
    expect(runs).toMatch(/\bscripts\/build-native\.sh\b/);
    expect(runs).toMatch(/\bnpm run build\b/);
    expect(pkg.scripts.build).toMatch(/tsc -p tsconfig\.build\.json/);
    // Dependencies are installed from the lock file.
    expect(runs).toMatch(/\bnpm ci\b/);
  });

  it('runs as non-root, exposes the NBD port, has a volume, and its entrypoint is the cownbd bin', () => {
    const runtime = stages[stages.length - 1]!;
    const users = args(runtime, 'USER');
    expect(users.length, 'runtime stage sets USER').toBeGreaterThan(0);
    expect(users[users.length - 1]).not.toMatch(/^(root|0)(:|$)/);
    expect(args(runtime, 'EXPOSE').join(' ').split(/\s+/)).toContain(String(DEFAULT_PORT));
    expect(args(runtime, 'VOLUME').length).toBeGreaterThan(0);

    // ENTRYPOINT ["cownbd"], CMD ["serve", ...]: every subcommand runs (docker run IMG info X).
    const entry = args(runtime, 'ENTRYPOINT');
    expect(entry).toHaveLength(1);
    const argv = execForm(entry[0]!);
    expect(argv, 'ENTRYPOINT in exec form (signals reach node directly)').toEqual(['cownbd']);
    const cmd = execForm(args(runtime, 'CMD').at(-1)!);
    expect(cmd?.[0]).toBe('serve');
    // `cownbd` on PATH is package.json's bin, made executable (tsc writes 0644 files).
    const runs = args(runtime, 'RUN').join('\n');
    const bin = path.posix.join(workdir(runtime), pkg.bin.cownbd!);
    expect(runs).toContain(`ln -s ${bin} /usr/local/bin/cownbd`);
    expect(runs).toMatch(new RegExp(`chmod (0?755|\\+x) ${bin.replace(/[.]/g, '\\.')}`));
    expect(pkg.bin.cownbd).toMatch(/^dist\//);
    // The bin really is the CLI entry built from src/cli/main.ts.
    expect(existsSync(path.join(REPO_ROOT, pkg.bin.cownbd!.replace(/^dist\//, 'src/').replace(/\.js$/, '.ts')))).toBe(true);
    // The runtime stage has the compiled CLI: dist is copied in.
    expect(args(runtime, 'COPY').some((a) => /--from=\S+\s+\S*\/dist\b/.test(a))).toBe(true);
  });

  it('pins base images to an exact version, drops npm at run time, binds every interface and has a HEALTHCHECK', () => {
    for (const st of stages) expect(st.from, `stage ${st.name ?? st.index}`).toMatch(/^node:\d+\.\d+\.\d+-[a-z]+-slim$|@sha256:[0-9a-f]{64}$/);
    const runtime = stages[stages.length - 1]!;
    const runs = args(runtime, 'RUN').join('\n');
    for (const tool of ['/usr/local/bin/npm', '/usr/local/bin/npx', '/usr/local/lib/node_modules/npm']) expect(runs).toContain(tool);
    expect(args(runtime, 'ENV')).toContain('COWNBD_BIND=0.0.0.0');
    // The CLI really reads COWNBD_BIND (and -b still wins).
    expect(readFileSync(path.join(REPO_ROOT, 'src', 'cli', 'serve-register.ts'), 'utf8')).toMatch(/--bind <addr>.*\.env\('COWNBD_BIND'\)/);
    expect(args(runtime, 'VOLUME').join(' ')).toContain('/srv/images');
    const hc = args(runtime, 'HEALTHCHECK');
    expect(hc).toHaveLength(1);
    const probe = execForm(hc[0]!.replace(/^.*?CMD\s+/, ''));
    expect(probe?.[0]).toBe('node');
    expect(probe?.[1]).toBe(path.posix.join(workdir(runtime), 'dist', 'cli', 'healthcheck.js'));
    expect(existsSync(path.join(REPO_ROOT, 'src', 'cli', 'healthcheck.ts'))).toBe(true);
  });

  it('.dockerignore keeps build output, dependencies and test artefacts out of the context', () => {
    const patterns = dockerignore();
    for (const p of ['node_modules', 'dist', 'build', '.bench', '.git']) expect(patterns, p).toContain(p);
    expect(ignored('node_modules/pino/package.json', patterns)).toBe(true);
    expect(ignored('src/cli/main.ts', patterns)).toBe(false);
    expect(ignored('package-lock.json', patterns)).toBe(false);
  });
});
