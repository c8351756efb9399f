#!/usr/bin/env bash
# Benchmark (not a test): cownbd against its peers on the same base, same run.
#
#   scripts/bench.sh            throughput table (npm run bench)
#   scripts/bench.sh memory     RSS table (scripts/bench/memory.mjs)
#   scripts/bench.sh qcow2      reading a qcow2 base (uncompressed, deflate, zstd): cownbd serve -r
#                               -f qcow2 vs qemu-nbd -r -f qcow2 (and nbdkit --filter=qcow2dec
#                               where nbdkit has it), read rows only (scripts/bench/qcow2.mjs;
#                               BENCH_QCOW2=plain,zlib,zstd picks the variants)
#   scripts/bench.sh objectstore  s3:// base (cold/warm) vs the same local base, and publish
#                               MiB/s, against s3rver (scripts/bench/objectstore.mjs;
#                               BENCH_S3_CHUNKS=1M,2M,4M compares chunk sizes)
#   scripts/bench.sh fleet      fleet machines over s3rver (issue 22): interval shipping's write
#                               cost vs none, FLUSH latency under on-flush vs fdatasync, takeover
#                               after kill -9 and the first reads after it vs a cold s3:// base
#                               read (scripts/bench/fleet.mjs; BENCH_FLEET_INTERVAL, _TTL,
#                               _FLUSHES, _TAKEOVERS). Short run: BENCH_SECONDS=4 BENCH_SIZE_MIB=256
#   scripts/bench.sh modern     today's clients with extended headers (issue 27): the throughput
#                               table with fio 3.39 (ioengine=nbd) and nbdcopy (libnbd 1.22) run
#                               from the cached trixie root (scripts/modern-run.sh, built by
#                               scripts/modern-root.sh), against cownbd-cow, cownbd-addcow and the
#                               root's own servers, trixie-qemu-threads (qemu-nbd 10, extended
#                               headers) and trixie-nbdkit-cow64k (nbdkit 1.42 --filter=cow, none).
#                               Rows: randread-4k-qd32, seqread-1m-qd8, randwrite-4k-qd32,
#                               seqwrite-1m-qd8, nbdcopy-null, nbdcopy-devnull-sync. The header says
#                               per target whether the clients got extended headers (the root's
#                               nbdinfo --json). Run dir and a hard link of the base under /tmp (all
#                               the chroot sees); results in .bench/results-modern.json
#                               (scripts/bench/modern.mjs; any nbdkit-*/qemu-* peer takes a trixie-
#                               prefix, e.g. trixie-qemu-uring; not combined with -tls).
#                               Short run: BENCH_SECONDS=3 BENCH_ROUNDS=2 BENCH_SIZE_MIB=256 nice …
#
# Throughput: every target serves a FRESH, EMPTY overlay over the same 1 GiB random base, for
# every (round, row), so reads go to the base and writes are first writes. Targets (BENCH_TARGETS):
#   cownbd-cow      cownbd serve --base BASE --overlay-dir DIR   (export vm → DIR/vm.cow)
#   cownbd-addcow   cownbd serving an add-cow overlay (cluster BENCH_ADDCOW_CLUSTER, default 4K;
#                   cownbd-addcow-4K, cownbd-addcow-1M … pick a cluster size per target)
#   nbdkit-cow64k, nbdkit-cow4k   nbdkit --filter=cow file, cow-block-size 64K / 4K
#   qemu-threads, qemu-uring      qemu-nbd on a qcow2 overlay, --aio=threads / io_uring
#   nbd-server-cow                nbd-server, copyonwrite = true
#   (reference only, never "best peer": cownbd-raw, nbdkit-file on a copy of the base)
#   cownbd-cow-tls, nbdkit-cow64k-tls   the same with --tls require (X.509, certificate made for
#                   the run); measured on randread-4k-qd32 and seqread-1m-qd8 only, fio with
#                   nbds://…?tls-verify-peer=false; ratios against the best -tls peer
#                   (scripts/bench/tls.mjs; any cownbd-*/nbdkit-* target takes a -tls suffix)
# Rows (BENCH_ROWS, prefixes): randread-4k-qd32 (1 conn), randread-4k-qd32-4conn (4 conns × QD8),
#   seqread-1m-qd8, randrw-70-30-4k-qd32, randwrite-4k-qd32, seqwrite-1m-qd8 (fio ioengine=nbd),
#   nbdcopy-null (2 conns × 64 requests × 256K → null:), nbdcopy-devnull-sync (--synchronous →
#   /dev/null), nbdcopy-file (→ a file; nbdcopy rows repeat whole-disk copies for BENCH_SECONDS);
#   randread-4k-qd1, randwrite-4k-qd1 (fio, also completion latency mean and p99 in µs);
#   scale8-randwrite-4k-qd8, scale8-seqwrite-1m-qd2: 8 machines at once, each its own overlay
#   and connection, aggregate (cownbd-cow: ONE process, exports vm0…vm7 of --overlay-dir;
#   peers: 8 processes; cownbd-addcow, TLS and reference targets skip them; the extra target
#   cownbd-cow-pN, scaling rows only, runs N cownbd processes: see docs/performance.md).
# Rounds are interleaved (BENCH_ROUNDS, default 2); each cell is the median over rounds, with
# server CPU (the server's process tree, from /proc) and client CPU in % of one core, and the
# server's CPU-seconds per GiB moved (its CPU share over the throughput, same window).
# Output: the table, each cownbd target's ratio to the best peer per row, .bench/results.json.
#
# Environment: BENCH_SECONDS (per cell, default 8), BENCH_RAMP (fio warm-up, default 1),
# BENCH_ROUNDS (2), BENCH_ROWS, BENCH_TARGETS, BENCH_ADDCOW_CLUSTER (4K), BENCH_SIZE_MIB (1024),
# BENCH_DIR (.bench), COWNBD_SERVE_ARGS, COWNBD_CLI (dist/cli/main.js).
# Timing: defaults = 7 targets × 13 rows × 2 rounds × ~11 s ≈ 33 minutes, + 2 TLS targets × 2 rows.
# Memory (scripts/bench.sh memory): see scripts/bench/memory.mjs; MEMORY_WRITES (10000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE="${1:-throughput}"
case "$MODE" in
  throughput | memory | objectstore | qcow2 | modern | fleet) ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "bench.sh: unknown mode '$MODE' (expected nothing, memory, qcow2, objectstore, fleet or modern)" >&2; exit 2 ;;
esac

die() { echo "bench.sh: $*" >&2; exit 1; }
if [[ $MODE == modern ]]; then
  # The clients come from the root; the host still needs nbdinfo (readiness checks) and python3.
  for tool in nbdinfo python3; do
    command -v "$tool" >/dev/null || die "'$tool' is required (Debian: libnbd-bin, python3; see docs/performance.md)"
  done
  status="$(bash scripts/modern-root.sh --status)"
  [[ $status == current ]] || die "the modern root is $status (build it: sudo bash scripts/modern-root.sh; docs/modern-clients.md)"
  bash scripts/modern-run.sh fio --enghelp=nbd >/dev/null 2>&1 || die "the modern root's fio has no nbd ioengine"
  export BENCH_MODE=modern
else
  for tool in fio nbdinfo nbdcopy python3; do
    command -v "$tool" >/dev/null || die "'$tool' is required (Debian: fio, libnbd-bin, python3; see docs/performance.md)"
  done
  fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine (Debian's fio has it)"
fi

# Node 24 from the `node` devDependency, called directly (not through npx) so the pid we
# kill is the server itself.
NODE24="$ROOT/node_modules/node/bin/node"
[[ -x "$NODE24" ]] || NODE24="$(command -v node)"
export NODE24
export COWNBD_CLI="${COWNBD_CLI:-$ROOT/dist/cli/main.js}"
[[ -f "$COWNBD_CLI" ]] || die "cownbd not built ($COWNBD_CLI missing: run npm run build)"
export BENCH_DIR="${BENCH_DIR:-$ROOT/.bench}"
mkdir -p "$BENCH_DIR"
# Keep logs of the last runs only.
find "$BENCH_DIR" -maxdepth 1 -name 'run.*' -type d -mmin +60 -exec rm -rf {} + 2>/dev/null || true
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'cownbd-bench-modern.*' -type d -mmin +60 -exec rm -rf {} + 2>/dev/null || true

if [[ $MODE == memory ]]; then exec "$NODE24" "$ROOT/scripts/bench/memory.mjs"; fi

SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
export BENCH_SIZE_MIB="$SIZE_MIB"
BASE="$BENCH_DIR/base-${SIZE_MIB}M.img"
if [[ ! -f "$BASE" || $(stat -c %s "$BASE") -ne $((SIZE_MIB * 1024 * 1024)) ]]; then
  echo "bench.sh: writing ${SIZE_MIB} MiB of random data to $BASE" >&2
  # AES-CTR keystream via openssl is ~10x faster than /dev/urandom; fall back if absent.
  # (head closing the pipe kills openssl with SIGPIPE, hence `|| true` and the size check.)
  if command -v openssl >/dev/null; then
    { openssl enc -aes-128-ctr -pass pass:cownbd-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } |
      head -c $((SIZE_MIB * 1024 * 1024)) >"$BASE.tmp"
  else
    head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$BASE.tmp"
  fi
  [[ $(stat -c %s "$BASE.tmp") -eq $((SIZE_MIB * 1024 * 1024)) ]] || die "could not write $BASE"
  mv "$BASE.tmp" "$BASE"
fi
export BENCH_BASE="$BASE"
if [[ $MODE == objectstore ]]; then exec "$NODE24" "$ROOT/scripts/bench/objectstore.mjs"; fi
if [[ $MODE == fleet ]]; then exec "$NODE24" "$ROOT/scripts/bench/fleet.mjs"; fi
if [[ $MODE == qcow2 ]]; then exec "$NODE24" "$ROOT/scripts/bench/qcow2.mjs"; fi
# Nothing may write to the base (we may run as root, so permissions prove nothing: check
# size + mtime after the run instead).
BASE_SUM_BEFORE="$(stat -c '%s %Y' "$BASE")"
"$NODE24" "$ROOT/scripts/bench/run.mjs"
[[ "$(stat -c '%s %Y' "$BASE")" == "$BASE_SUM_BEFORE" ]] || die "the base image $BASE was modified!"
