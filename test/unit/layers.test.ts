/**
 * The layer rules and the cycle rule of .dependency-cruiser.cjs can fail: a scratch
 * project with the repository's config and tsconfig, and a src/ that breaks them on
 * purpose, is cruised by the real depcruise. scripts/test.sh runs the same config on the
 * real src/ (which must pass); this test keeps a config that silently allows everything
 * from passing too. A type-only cycle is not a cycle (tsc erases it): it must not be
 * reported, as the structure test never reported one.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/images.js';
import { REPO_ROOT } from '../helpers/server.js';

interface Violation {
  readonly from: string;
  readonly to: string;
  readonly rule: { readonly name: string };
}

const FIXTURE: Record<string, string> = {
  // A runtime cycle in the bottom layer.
  'src/util/a.ts': "import { b } from './b.js';\nexport const a = (): number => b() + 1;\n",
  'src/util/b.ts': "import { a } from './a.js';\nexport const b = (): number => a();\n",
  // A cycle through a type-only import: erased at run time, allowed.
  'src/protocol/t1.ts': "import type { T2 } from './t2.js';\nexport interface T1 { readonly next?: T2 }\n",
  'src/protocol/t2.ts': "import { t1Name } from './t3.js';\nexport interface T2 { readonly name: string }\nexport const t2 = t1Name;\n",
  'src/protocol/t3.ts': "import type { T1 } from './t1.js';\nexport type T3 = T1;\nexport const t1Name = 't1';\n",
  // Upward imports: the data path into the control plane, formats into the server, server into tools.
  'src/control/plane.ts': 'export const plane = 1;\n',
  'src/server/tool-user.ts': "import { tool } from '../tools/tool.js';\nexport const user = tool;\n",
  'src/tools/tool.ts': 'export const tool = 1;\n',
  'src/block/device.ts': "import type { P } from '../formats/record.js';\nimport { plane } from '../control/plane.js';\nexport const device: P = plane;\n",
  'src/formats/record.ts': "import { api } from '../api/create-server.js';\nexport type P = number;\nexport const r = api;\n",
  'src/api/create-server.ts': "import { cli } from '../cli/main.js';\nexport const api = cli;\n",
  'src/cli/main.ts': "import { api } from '../api/create-server.js';\nexport const cli = 1;\nexport const both = api;\n",
};

describe('.dependency-cruiser.cjs', () => {
  const tmp = makeTempDir('cownbd-layers-');
  afterAll(() => tmp.cleanup());

  it('reports cycles and imports from a higher layer, and nothing else', () => {
    for (const [file, text] of Object.entries(FIXTURE)) {
      mkdirSync(path.dirname(tmp.file(file)), { recursive: true });
      writeFileSync(tmp.file(file), text);
    }
    for (const f of ['.dependency-cruiser.cjs', 'tsconfig.json', 'tsconfig.build.json']) copyFileSync(path.join(REPO_ROOT, f), tmp.file(f));
    symlinkSync(path.join(REPO_ROOT, 'node_modules'), tmp.file('node_modules'), 'dir');
    const bin = path.join(REPO_ROOT, 'node_modules', '.bin', 'depcruise');
    const r = spawnSync(bin, ['src', '--config', '.dependency-cruiser.cjs', '--output-type', 'json'], { cwd: tmp.path, encoding: 'utf8', timeout: 90_000 });
    // (The json reporter exits 0 whatever it found: the report is what counts.)
    expect(r.stdout, r.stderr).toMatch(/^\{/);
    const violations = (JSON.parse(r.stdout) as { summary: { violations: Violation[] } }).summary.violations;
    // A cycle is reported once, from whichever member the cruise met first.
    const found = violations.map((v) => (v.rule.name === 'no-circular' ? `no-circular: ${[v.from, v.to].sort().join(' ↔ ')}` : `${v.rule.name}: ${v.from} → ${v.to}`)).sort();
    expect(found).toEqual(
      [
        'no-circular: src/util/a.ts ↔ src/util/b.ts',
        'no-circular: src/api/create-server.ts ↔ src/cli/main.ts',
        'not-to-cli: src/api/create-server.ts → src/cli/main.ts',
        'server-tools-siblings: src/server/tool-user.ts → src/tools/tool.ts',
        'control-above-server: src/block/device.ts → src/control/plane.ts',
        'objectstore-below-formats: src/block/device.ts → src/formats/record.ts',
        'api-above-control: src/formats/record.ts → src/api/create-server.ts',
      ].sort(),
    );
  }, 120_000);
});
