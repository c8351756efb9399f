/**
 * Sizes of the reliability campaign (issue 15). `npm test` runs the CI sizes below;
 * `npm run torture -- --points 1000 --protocol-cases 200000 --image-cases 20000` (scripts/
 * torture.mjs) passes larger ones through these variables. Every test prints what it ran
 * ("campaign: …" lines), which docs/reliability.md's figures come from.
 */
function knob(name: string, ci: number): number {
  const v = Number(process.env[name]);
  return Number.isInteger(v) && v > 0 ? v : ci;
}

export const CAMPAIGN = {
  /** kill -9 points; each verifies three exports (cow, add-cow, overlay-dir). */
  crashKills: knob('COWNBD_TORTURE_KILLS', 34),
  protocolCases: knob('COWNBD_TORTURE_PROTOCOL_CASES', 20_000),
  imageCases: knob('COWNBD_TORTURE_IMAGE_CASES', 2_000),
  /** Rounds of the control-plane race campaign (one admin operation into a burst of clients each). */
  controlRounds: knob('COWNBD_TORTURE_CONTROL_ROUNDS', 60),
  /**
   * `npm test` (and so CI) runs one fixed seed — the long run's, known clean — so a landing
   * never hangs on a case nobody has seen; `npm run torture` and COWNBD_TORTURE_SEED explore others.
   */
  seed: knob('COWNBD_TORTURE_SEED', 20261202),
};

/** Per-test timeout that grows with the sizes. */
export function timeoutFor(units: number, msPerUnit: number, floorMs = 120_000): number {
  return Math.max(floorMs, units * msPerUnit + 60_000);
}

/** Small deterministic PRNG (mulberry32): campaign runs are reproducible from their seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function report(line: string): void {
  process.stdout.write(`campaign: ${line}\n`);
}
