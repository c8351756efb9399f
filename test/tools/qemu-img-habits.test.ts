/**
 * The image tool accepts what qemu-img users type: --output=json (qemu-img's document for
 * info/map/check, test/tools/qemu-json.test.ts; --json elsewhere), -p (progress bar even when stderr is a pipe) and -q, `create FILE SIZE` (sparse
 * raw), `convert -B BACKING -F FORMAT`, `rebase -u`, `check -r leaks|all`, `-U` where a
 * read-only open makes it meaningless; help texts carry no internal references. The bar
 * line itself fits the width it is given and shows rate and ETA.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { createCow } from '../../src/formats/cow/index.js';
import { progressLine } from '../../src/tools/progress.js';
import { createRawImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH, assertBuilt } from '../helpers/server.js';

const MiB = 1024 * 1024;

function cli(args: string[], cwd?: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  assertBuilt();
  return new Promise((resolve) => {
    // stdio pipes: stderr is NOT a terminal here, as in CI logs.
    const p = spawn(process.execPath, [CLI_PATH, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    p.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

describe('qemu-img habits', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it('commit --output=json is refused (it named the output file "json"); -o ./json still writes that file', async () => {
    const base = createRawImage(tmp.file('commit-o-base.raw'), 4 * MiB, [[0, 64 * 1024]]);
    const cow = tmp.file('commit-o.cow');
    await createCow(cow, { backingFile: base });
    const r = await cli(['commit', cow, '--output=json'], tmp.path);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/names the file to write.*use --json/);
    expect(() => statSync(tmp.file('json'))).toThrow();
    const ok = await cli(['commit', cow, '-o', './json', '-q'], tmp.path);
    expect(ok.status, ok.stderr).toBe(0);
    expect(statSync(tmp.file('json')).size).toBe(4 * MiB);
  });

  it("--output=json prints qemu-img's document (info, map, check), --json cownbd's; --output=human the text", async () => {
    const base = createRawImage(tmp.file('o-base.raw'), 4 * MiB, [[0, 64 * 1024]]);
    const cow = tmp.file('o.cow');
    await createCow(cow, { backingFile: base });
    // What tells the two documents apart: qemu-img's kebab-case keys / array, cownbd's camelCase.
    const qemuShape: Record<string, (d: any) => boolean> = {
      info: (d) => d['virtual-size'] === 4 * MiB && !('virtualSize' in d),
      map: (d) => Array.isArray(d) && d[0].present === true,
      check: (d) => d['check-errors'] === 0 && !('findings' in d),
    };
    for (const cmd of [['info', cow], ['map', cow], ['check', cow]]) {
      const a = await cli([...cmd, '--json']);
      const b = await cli([...cmd, '--output=json']);
      const c = await cli([...cmd, '--output', 'json']);
      const both = await cli([...cmd, '--json', '--output=json']);
      expect(b.status, b.stderr).toBe(a.status);
      expect(qemuShape[cmd[0]!]!(JSON.parse(b.stdout)), b.stdout).toBe(true);
      expect(qemuShape[cmd[0]!]!(JSON.parse(a.stdout)), a.stdout).toBe(false);
      expect(c.stdout).toBe(b.stdout);
      expect(both.stdout).toBe(a.stdout);
      const human = await cli([...cmd, '--output=human']);
      expect(() => JSON.parse(human.stdout)).toThrow();
    }
    const bad = await cli(['info', cow, '--output=yaml']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/'yaml' is invalid.*human, json/);
    // qemu-img convert has no JSON: there --output=json is --json.
    const conv = await cli(['convert', cow, '-O', 'raw', tmp.file('o-flat.raw'), '--output=json']);
    expect(JSON.parse(conv.stdout).outputFormat).toBe('raw');
  });

  it('-p draws the bar (rate, ETA, ASCII) even when stderr is a pipe; without -p or with -q nothing', async () => {
    const base = createRawImage(tmp.file('p-base.raw'), 16 * MiB, [[0, 16 * MiB]]);
    const withP = await cli(['convert', base, '-O', 'raw', tmp.file('p1.raw'), '-p']);
    expect(withP.status, withP.stderr).toBe(0);
    expect(withP.stderr).toMatch(/convert p-base\.raw {2}\[#+\] {2}100\.0% {2}16 MiB \/ 16 MiB {2}\S+ \S*B\/s {2}ETA \d+s/);
    expect(withP.stderr).not.toContain('\x1b[');
    const piped = await cli(['convert', base, '-O', 'raw', tmp.file('p2.raw')]);
    expect(piped.stderr).toBe('');
    const quiet = await cli(['convert', base, '-O', 'raw', tmp.file('p3.raw'), '-p', '-q']);
    expect(quiet.stderr).toBe('');
    expect(quiet.stdout).toBe('');
    expect(readFileSync(tmp.file('p3.raw')).equals(readFileSync(base))).toBe(true);
  });

  it('the bar line fits the width and shows percentage, sizes, rate and ETA', () => {
    for (const width of [60, 80, 120, 300]) {
      const line = progressLine('commit vm.cow', 512 * MiB, 1024 * MiB, 4000, 4, width);
      expect(line.length).toBeLessThan(width);
      expect(line).toMatch(/ 50\.0% {2}512 MiB \/ 1 GiB {2}128 MiB\/s {2}ETA 4s$/);
      // Wider terminals get a longer bar (up to 60 cells); narrow ones keep the numbers.
      expect(line.includes('[')).toBe(width >= 80);
    }
    expect(progressLine('commit vm.cow', 0, 1, 1, 1, 120).length).toBeGreaterThan(progressLine('commit vm.cow', 0, 1, 1, 1, 80).length);
    expect(progressLine('x', 0, 100, 10, Infinity, 80)).toMatch(/ETA --$/);
    expect(progressLine('x', 1, 100, 10, 3725, 80)).toMatch(/ETA 1h02m$/);
  });

  it('create FILE SIZE makes a sparse raw file (qemu-img create); it refuses to overwrite without --force', async () => {
    const f = tmp.file('new.raw');
    const r = await cli(['create', f, '64M']);
    expect(r.status, r.stderr).toBe(0);
    const st = statSync(f);
    expect(st.size).toBe(64 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB);
    const again = await cli(['create', f, '1M']);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/already exists \(use --force/);
    expect((await cli(['create', f, '1M', '--force'])).status).toBe(0);
    expect(statSync(f).size).toBe(MiB);
    const noSize = await cli(['create', tmp.file('nosize.raw')]);
    expect(noSize.stderr).toMatch(/needs a size: cownbd create FILE 64M/);
    // -f add-cow FILE SIZE is the same as --size.
    const ac = await cli(['create', '-f', 'add-cow', tmp.file('s.add-cow'), '8M', '--image', tmp.file('s.img')]);
    expect(ac.status, ac.stderr).toBe(0);
    const info = JSON.parse((await cli(['info', tmp.file('s.add-cow'), '--json'])).stdout) as { virtualSize: number };
    expect(info.virtualSize).toBe(8 * MiB);
  });

  it('convert -B BACKING -F FORMAT (qemu-img spelling) builds the overlay; -b still works', async () => {
    const base = createRawImage(tmp.file('commit-o-base.raw'), 4 * MiB, [[0, 4 * MiB]], 3);
    const src = createRawImage(tmp.file('c-src.raw'), 4 * MiB, [[0, 4 * MiB]], 3);
    // One differing sector: only it lands in the overlay.
    const fd = readFileSync(src);
    fd.fill(0x77, MiB, MiB + 512);
    writeFileSync(src, fd);
    const r = await cli(['convert', src, '-O', 'cow', tmp.file('c.cow'), '-B', base, '-F', 'raw', '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).bytesWritten).toBe(512);
    const info = JSON.parse((await cli(['info', tmp.file('c.cow'), '--json'])).stdout) as { backingFile?: { resolved?: string } };
    expect(JSON.stringify(info)).toContain(base);
    const old = await cli(['convert', src, '-O', 'cow', tmp.file('c2.cow'), '-b', base]);
    expect(old.status, old.stderr).toBe(0);
  });

  it('rebase -u is --unsafe; check -r leaks|all repairs like --repair; -U is accepted by read-only commands', async () => {
    const base = createRawImage(tmp.file('r-base.raw'), 1001 * 512);
    const copy = createRawImage(tmp.file('r-copy.raw'), 1001 * 512);
    const cow = tmp.file('r.cow');
    await createCow(cow, { backingFile: base });
    const u = await cli(['rebase', '-u', cow, '-b', copy, '--json']);
    expect(u.status, u.stderr).toBe(0);
    expect(JSON.parse(u.stdout).unsafe).toBe(true);
    for (const mode of ['leaks', 'all']) {
      // Seven bits past the last sector: a leak that check reports (3) and -r fixes (0).
      const b = readFileSync(cow);
      b[8192 + 125] = 0xfe;
      writeFileSync(cow, b);
      expect((await cli(['check', cow])).status).toBe(3);
      const r = await cli(['check', '-r', mode, cow]);
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toMatch(/Repaired: tail-bits/);
    }
    expect((await cli(['check', '-r', 'everything', cow])).stderr).toMatch(/'everything' is invalid.*leaks, all/);
    for (const cmd of [['info', '-U', cow], ['map', '-U', cow], ['check', '-U', cow], ['convert', '-U', cow, '-O', 'raw', tmp.file('u.raw')]]) {
      const r = await cli(cmd);
      expect(r.status, `${cmd.join(' ')}: ${r.stderr}`).toBe(0);
    }
  });

  it('help texts carry no internal references', async () => {
    const cmds = ['', 'serve', 'demo', 'create', 'info', 'check', 'map', 'compare', 'commit', 'convert', 'rebase', 'add-cow finalize'];
    let all = '';
    for (const c of cmds) {
      const r = await cli([...(c ? c.split(' ') : []), '--help']);
      expect(r.status).toBe(0);
      all += r.stdout;
    }
    expect(all).not.toMatch(/\((P|C|A)\d+\)|\b(P|C|A)\d+\b|cow-formats|shared\/reference|issue \d+|TODO|XXX/);
  });
});
