#!/usr/bin/env node
// `npm run torture -- [--kills N] [--points N] [--protocol-cases N] [--image-cases N] [--control-rounds N] [--seed N]`:
// the reliability campaign (test/campaign/) with long-run sizes. `--points N` asks for N
// crash points (each kill verifies three exports, so kills = ceil(N / 3)). Prints the
// "campaign:" figure lines docs/reliability.md quotes. Needs `npm run build` first.
import { spawnSync } from 'node:child_process';

const args = process.argv.slice(2);
const env = { ...process.env };
const names = {
  '--kills': 'COWNBD_TORTURE_KILLS',
  '--protocol-cases': 'COWNBD_TORTURE_PROTOCOL_CASES',
  '--image-cases': 'COWNBD_TORTURE_IMAGE_CASES',
  '--control-rounds': 'COWNBD_TORTURE_CONTROL_ROUNDS',
  '--seed': 'COWNBD_TORTURE_SEED',
};
for (let i = 0; i < args.length; i += 2) {
  const [flag, value] = [args[i], args[i + 1]];
  if (!/^\d+$/.test(value ?? '')) {
    console.error(`torture: ${flag} needs a positive integer`);
    process.exit(2);
  }
  if (flag === '--points') env.COWNBD_TORTURE_KILLS = String(Math.ceil(Number(value) / 3));
  else if (names[flag]) env[names[flag]] = value;
  else {
    console.error(`torture: unknown option ${flag} (known: --points, ${Object.keys(names).join(', ')})`);
    process.exit(2);
  }
}
// A new seed each long run (npm test pins one); printed so a finding can be replayed.
env.COWNBD_TORTURE_SEED ??= String(Date.now() % 1_000_000);
console.log(`torture: seed ${env.COWNBD_TORTURE_SEED} (replay with --seed ${env.COWNBD_TORTURE_SEED})`);
const r = spawnSync('npx', ['vitest', 'run', 'test/campaign'], { stdio: 'inherit', env });
process.exit(r.status ?? 1);
