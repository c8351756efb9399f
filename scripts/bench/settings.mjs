// The settings every benchmark mode reads from scripts/bench.sh's environment (BENCH_*), in
// one place: the table (run.mjs) and the qcow2 mode (qcow2.mjs) read the same knobs.
export const env = process.env;
export const benchDir = env.BENCH_DIR;
export const base = env.BENCH_BASE;
export const seconds = Number(env.BENCH_SECONDS ?? 8);
export const ramp = Number(env.BENCH_RAMP ?? 1);
export const rounds = Number(env.BENCH_ROUNDS ?? 2);
export const sizeBytes = Number(env.BENCH_SIZE_MIB ?? 1024) * 2 ** 20;
/** A list variable: "a,b c" → ['a', 'b', 'c']. */
export const split = (v) => (v ?? '').split(/[\s,]+/).filter(Boolean);
