/**
 * The npm package: `npm pack` ships only what runs (dist without source maps, the addon's
 * C source and its build script, the man page, contrib/systemd, docs, LICENSE, README) and nothing from
 * test/, bench or e2e; package.json carries repository/homepage; `cownbd --version` is
 * package.json's version. Then the packed tarball is installed with the real npm into a
 * temporary prefix (`npm install -g --prefix`) and the installed `cownbd` serves a disk
 * to nbdinfo. scripts/build-native.sh says why when there is no compiler.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createRawImage, makeTempDir, sha256File } from '../helpers/images.js';
import { CLI_PATH, REPO_ROOT, assertBuilt } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';

const hasNpm = requireTool('npm');
const hasNbdinfo = requireTool('nbdinfo');
const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  license: string;
  repository?: { url?: string };
  homepage?: string;
  bin: Record<string, string>;
  scripts: Record<string, string>;
};
const pkgScripts = pkg.scripts;

function run(cmd: string, args: string[], opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    p.once('close', (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
  });
}

/** Every .ts file under src/, as the .js path it compiles to. */
function compiledSources(dir = path.join(REPO_ROOT, 'src'), rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) out.push(...compiledSources(path.join(dir, e.name), `${rel}${e.name}/`));
    else if (e.name.endsWith('.ts')) out.push(`dist/${rel}${e.name.replace(/\.ts$/, '.js')}`);
  }
  return out;
}

describe('npm package', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  let tarball: string | undefined;
  let files: string[] = [];

  it.runIf(hasNpm)('npm pack ships only what runs', async () => {
    assertBuilt();
    // --ignore-scripts: no `prepare` rebuild of dist/ under the other tests' feet.
    const r = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp.path], { cwd: REPO_ROOT });
    expect(r.status, r.stderr).toBe(0);
    const [info] = JSON.parse(r.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
    tarball = path.join(tmp.path, info!.filename);
    files = info!.files.map((f) => f.path);
    for (const must of ['package.json', 'LICENSE', 'README.md', 'native/fsx.c', 'scripts/build-native.sh', 'scripts/ci-mount.sh', pkg.bin.cownbd!, 'dist/cownbd.1', 'contrib/systemd/cownbd.service', 'contrib/systemd/cownbd.socket', 'contrib/systemd/cownbd.default']) {
      expect(files, must).toContain(must);
    }
    expect(files.filter((f) => /^(test|src|bench)\/|^scripts\/(bench|e2e|ci-(?!mount\.sh$))|\.map$|^\.|tsconfig|vitest|Dockerfile/.test(f))).toEqual([]);
    // dist/ holds exactly the compiled sources (and their .d.ts): nothing stale, nothing extra.
    const expected = new Set(compiledSources());
    const shippedJs = files.filter((f) => f.startsWith('dist/') && f.endsWith('.js'));
    expect(shippedJs.filter((f) => !expected.has(f)), 'stale files in dist/ (rebuild from clean)').toEqual([]);
    expect(readFileSync(path.join(REPO_ROOT, 'LICENSE'), 'utf8')).toMatch(/^MIT License[\s\S]*cownbd contributors/);
    expect(pkg.license).toBe('MIT');
    expect(pkg.repository?.url).toMatch(/^git\+https:\/\//);
    expect(pkg.homepage).toMatch(/^https:\/\//);
  });

  it('cownbd --version is the version in package.json', () => {
    assertBuilt();
    const r = spawnSync(process.execPath, [CLI_PATH, '--version'], { encoding: 'utf8' });
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  it.runIf(hasNpm && hasNbdinfo)('npm install -g --prefix TMP ./cownbd-*.tgz, then the installed cownbd serves', async () => {
    expect(tarball, 'the pack test ran first').toBeDefined();
    const prefix = tmp.file('prefix');
    const r = await run('npm', ['install', '-g', '--prefix', prefix, tarball!, '--prefer-offline', '--no-audit', '--no-fund'], { timeoutMs: 150_000 });
    expect(r.status, r.stderr).toBe(0);
    const bin = path.join(prefix, 'bin', 'cownbd');
    expect(statSync(bin).mode & 0o111).not.toBe(0);
    const installed = path.join(prefix, 'lib', 'node_modules', 'cownbd');
    // package.json "man": npm links the page where `man cownbd` finds it under this prefix.
    expect(existsSync(path.join(prefix, 'share', 'man', 'man1', 'cownbd.1')), 'man page installed').toBe(true);
    if (requireTool('man')) {
      const man = spawnSync('man', ['-w', 'cownbd'], { encoding: 'utf8', env: { ...process.env, MANPATH: path.join(prefix, 'share', 'man') } });
      // man prints the page it found with the link resolved: the package's own dist/cownbd.1.
      expect(man.stdout.trim(), man.stderr).toBe(realpathSync(path.join(installed, 'dist', 'cownbd.1')));
    }
    expect(existsSync(path.join(installed, 'test'))).toBe(false);
    const img = createRawImage(tmp.file('disk.raw'), 3 * 1024 * 1024);
    const before = sha256File(img);
    // Through the bin link and its #! line, as a user would run it.
    const served = await run(bin, ['serve', '-p', '0', '-r', img, '--run', 'nbdinfo --size "$uri"'], { env: { PATH: `${path.dirname(process.execPath)}:${process.env.PATH}` } });
    expect(served.status, served.stderr).toBe(0);
    expect(served.stdout).toContain(`${3 * 1024 * 1024}\n`);
    expect(sha256File(img)).toBe(before);
    const version = await run(bin, ['--version'], { env: { PATH: `${path.dirname(process.execPath)}:${process.env.PATH}` } });
    expect(version.stdout.trim()).toBe(pkg.version);
  }, 200_000);

  it.runIf(hasNpm)('npm install in a clone shows build-native.sh\'s reason when there is no compiler', async () => {
    // A project with our install script and nothing else (no dependencies: offline, fast).
    const proj = tmp.file('clone');
    mkdirSync(path.join(proj, 'scripts'), { recursive: true });
    mkdirSync(path.join(proj, 'native'));
    copyFileSync(path.join(REPO_ROOT, 'scripts', 'build-native.sh'), path.join(proj, 'scripts', 'build-native.sh'));
    copyFileSync(path.join(REPO_ROOT, 'native', 'fsx.c'), path.join(proj, 'native', 'fsx.c'));
    writeFileSync(path.join(proj, 'package.json'), JSON.stringify({ name: 'clone', version: '1.0.0', private: true, scripts: { install: pkgScripts.install } }));
    const r = await run('npm', ['install', '--offline', '--no-audit', '--no-fund'], { cwd: proj, env: { CC: '/nonexistent/cc' } });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/WARNING: no C compiler .*sparse-file support .* is disabled/);
  });

  it('scripts/build-native.sh says why when there is no C compiler (and still exits 0)', async () => {
    const fsx = path.join(REPO_ROOT, 'build', 'fsx.node');
    const before = existsSync(fsx) ? sha256File(fsx) : undefined;
    const r = await run('bash', [path.join(REPO_ROOT, 'scripts', 'build-native.sh')], { env: { CC: '/nonexistent/cc' } });
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/WARNING: no C compiler \('\/nonexistent\/cc' not found; install gcc or set CC\); sparse-file support \(holes, trim, fast zero\) is disabled/);
    // An addon built before is left alone.
    expect(existsSync(fsx) ? sha256File(fsx) : undefined).toBe(before);
  });
});
