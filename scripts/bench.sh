#!/usr/bin/env bash
# Benchmark (not a test): cownbd against nbdkit and qemu-nbd, driven by fio's libnbd engine.
#
#   scripts/bench.sh [raw|cow|all]        (default: raw;  npm run bench -- cow)
#
# Peer sets (every target in a run serves the SAME base image):
#   raw  cownbd-raw     cownbd serving a raw image
#        nbdkit-file    nbdkit file plugin, same image
#   cow  cownbd-cow     cownbd serving a UML cow overlay over the base (`cownbd create -f cow`)
#        nbdkit-cow     nbdkit --filter=cow file (default cow-block-size, 64K)
#        nbdkit-cow4k   same with cow-block-size=4096 (cownbd's cow granularity)
#        qemu-qcow2     qemu-nbd on a qcow2 overlay (qemu-img create -b base -F raw)
#   all  both sets
#
# Rows: 4k randread QD32, 4k randwrite QD32, 1M seqread QD8, 1M seqwrite QD8. Each
# (target, row) gets a fresh server and, for overlays, a fresh empty overlay, so reads of
# overlays really go to the base and writes always start from an empty overlay. Raw
# targets serve a copy of the base (raw.img), so the base stays pristine for the overlays.
# The base is filled with random data so reads move real bytes. With the machine's RAM
# the images sit in the page cache: this measures the servers, not the disk.
#
# Output: a table (IOPS for 4k rows, MiB/s for 1M rows) with cownbd/peer ratios, and
# .bench/results.json. A cownbd target that cannot start (server not built yet, command
# missing) is reported as FAIL with the reason; the peers still run.
#
# Environment: BENCH_SECONDS (per row, default 8), BENCH_RAMP (warm-up seconds, default 1),
# BENCH_SIZE_MIB (base size, default 1024), BENCH_DIR (default .bench),
# COWNBD_SERVE_ARGS (extra args for `cownbd serve`), COWNBD_EXPORT (export name, default ""),
# COWNBD_CLI (default dist/cli/main.js), BENCH_TARGETS (override the target list).
# Timing: `all` = 6 targets x 4 rows x (8+1 s + ~1 s start) ≈ 4-5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SET="${1:-raw}"
case "$SET" in
  raw) TARGETS=(cownbd-raw nbdkit-file) ;;
  cow) TARGETS=(cownbd-cow nbdkit-cow nbdkit-cow4k qemu-qcow2) ;;
  all) TARGETS=(cownbd-raw nbdkit-file cownbd-cow nbdkit-cow nbdkit-cow4k qemu-qcow2) ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "bench.sh: unknown peer set '$SET' (expected raw, cow or all)" >&2; exit 2 ;;
esac
if [[ -n "${BENCH_TARGETS:-}" ]]; then read -r -a TARGETS <<<"$BENCH_TARGETS"; fi

RUNTIME="${BENCH_SECONDS:-8}"
RAMP="${BENCH_RAMP:-1}"
SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
BENCH_DIR="${BENCH_DIR:-$ROOT/.bench}"
EXPORT="${COWNBD_EXPORT:-}"
read -r -a SERVE_EXTRA <<<"${COWNBD_SERVE_ARGS:-}"

# name  rw  bs  iodepth
ROWS=(
  "randread-4k-qd32 randread 4k 32"
  "randwrite-4k-qd32 randwrite 4k 32"
  "seqread-1m-qd8 read 1M 8"
  "seqwrite-1m-qd8 write 1M 8"
)

die() { echo "bench.sh: $*" >&2; exit 1; }
for tool in fio nbdinfo python3; do
  command -v "$tool" >/dev/null || die "'$tool' is required (Debian: fio, libnbd-bin, python3)"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine (Debian's fio has it)"

# Node 24 from the `node` devDependency, called directly (not through npx) so the pid we
# kill is the server itself.
NODE24="$ROOT/node_modules/node/bin/node"
[[ -x "$NODE24" ]] || NODE24="$(command -v node)"
CLI="${COWNBD_CLI:-$ROOT/dist/cli/main.js}"

mkdir -p "$BENCH_DIR"
RUN_DIR="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
BASE="$BENCH_DIR/base-${SIZE_MIB}M.img"

SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    # Give it 5 s to exit, then SIGKILL: a wedged server must not outlive the benchmark.
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
cleanup() {
  stop_server
  # Overlays and the raw copy are per run; the base is kept for the next run.
  rm -rf "$RUN_DIR"/*.img "$RUN_DIR"/*.cow "$RUN_DIR"/*.qcow2 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- images --------------------------------------------------------------------------

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
# Nothing may write to the base (we may run as root, so permissions prove nothing: check
# size + mtime after the run instead).
BASE_SUM_BEFORE="$(stat -c '%s %Y' "$BASE")"

RAW_COPY=""
needs_raw_copy() { for t in "${TARGETS[@]}"; do [[ $t == cownbd-raw || $t == nbdkit-file ]] && return 0; done; return 1; }
if needs_raw_copy; then
  RAW_COPY="$RUN_DIR/raw.img"
  cp "$BASE" "$RAW_COPY"
fi

# ---- servers -------------------------------------------------------------------------

# start_target TARGET ROW PORT LOG: prepares a fresh overlay if needed and starts the
# server in the background (SERVER_PID). On failure returns 1 with FAIL_REASON set.
# (Not called in $(...): the server must be a child of this shell so we can stop it.)
FAIL_REASON=""
start_target() {
  local target=$1 row=$2 port=$3 log=$4 ov
  case "$target" in
    cownbd-raw | cownbd-cow)
      [[ -f "$CLI" ]] || { FAIL_REASON="cownbd not built ($CLI missing: run npm run build)"; return 1; }
      local image=$RAW_COPY
      if [[ $target == cownbd-cow ]]; then
        ov="$RUN_DIR/$row.cow"
        rm -f "$ov"
        if ! "$NODE24" "$CLI" create -f cow "$ov" --backing "$BASE" -F raw >>"$log" 2>&1; then
          FAIL_REASON="'cownbd create -f cow OV --backing BASE -F raw' failed: $(tail -n 1 "$log")"
          return 1
        fi
        image=$ov
      fi
      "$NODE24" "$CLI" serve "$image" -p "$port" "${SERVE_EXTRA[@]}" >>"$log" 2>&1 &
      ;;
    nbdkit-file)
      nbdkit -f -i 127.0.0.1 -p "$port" file "file=$RAW_COPY" >>"$log" 2>&1 &
      ;;
    nbdkit-cow)
      nbdkit -f -i 127.0.0.1 -p "$port" --filter=cow file "file=$BASE" >>"$log" 2>&1 &
      ;;
    nbdkit-cow4k)
      nbdkit -f -i 127.0.0.1 -p "$port" --filter=cow file "file=$BASE" cow-block-size=4096 >>"$log" 2>&1 &
      ;;
    qemu-qcow2)
      ov="$RUN_DIR/$row.qcow2"
      rm -f "$ov"
      qemu-img create -q -f qcow2 -b "$BASE" -F raw "$ov" >>"$log" 2>&1 ||
        { FAIL_REASON="qemu-img create failed: $(tail -n 1 "$log")"; return 1; }
      qemu-nbd -t --shared=8 -f qcow2 -b 127.0.0.1 -p "$port" "$ov" >>"$log" 2>&1 &
      ;;
    *) FAIL_REASON="unknown target $target"; return 1 ;;
  esac
  SERVER_PID=$!
  local uri="nbd://127.0.0.1:$port/$EXPORT"
  for _ in $(seq 150); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=""
      FAIL_REASON="server exited at startup: $(tail -n 1 "$log")"
      return 1
    fi
    nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  FAIL_REASON="server did not answer on $uri within 15 s: $(tail -n 1 "$log")"
  stop_server
  return 1
}

# ---- run -----------------------------------------------------------------------------

RESULTS="$RUN_DIR/rows.tsv" # target  row  status  fio-json-or-reason
: >"$RESULTS"
echo "bench.sh: set=$SET targets=${TARGETS[*]} ${RUNTIME}s/row (+${RAMP}s ramp), base ${SIZE_MIB} MiB, run dir $RUN_DIR" >&2

# Row-major: every target runs a row back to back, so the machine's state (dirty pages
# from earlier write rows, writeback) is as similar as possible for the targets compared.
# (A `sync` before each row made things worse here: the flush of gigabytes to the VM's
# disk kept writing back during the following measurements.)
for spec in "${ROWS[@]}"; do
  for target in "${TARGETS[@]}"; do
    read -r row rw bs qd <<<"$spec"
    log="$RUN_DIR/$target.$row.log"
    port="$(free_port)"
    printf 'bench.sh: %-13s %-18s ' "$target" "$row" >&2
    if ! start_target "$target" "$row" "$port" "$log"; then
      echo "FAIL: $FAIL_REASON" >&2
      printf '%s\t%s\tfail\t%s\n' "$target" "$row" "$FAIL_REASON" >>"$RESULTS"
      continue
    fi
    out="$RUN_DIR/$target.$row.json"
    if fio --name="$row" --ioengine=nbd --uri="nbd://127.0.0.1:$port/$EXPORT" \
      --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 \
      --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
      --randrepeat=0 --output-format=json --output="$out" >>"$log" 2>&1; then
      printf '%s\t%s\tok\t%s\n' "$target" "$row" "$out" >>"$RESULTS"
      echo "ok" >&2
    else
      reason="fio failed: $(grep -m1 -iE 'error|fail' "$log" "$out" 2>/dev/null | head -n 1 | cut -c1-160)"
      printf '%s\t%s\tfail\t%s\n' "$target" "$row" "$reason" >>"$RESULTS"
      echo "FAIL: $reason" >&2
    fi
    stop_server
  done
done

[[ "$(stat -c '%s %Y' "$BASE")" == "$BASE_SUM_BEFORE" ]] || die "the base image $BASE was modified!"

"$NODE24" "$ROOT/scripts/bench/report.mjs" "$RESULTS" "$BENCH_DIR/results.json" \
  "$SET" "$RUNTIME" "$RAMP" "$SIZE_MIB"
# Keep logs and fio JSON of the last run for inspection; drop older runs.
find "$BENCH_DIR" -maxdepth 1 -name 'run.*' -type d ! -path "$RUN_DIR" -exec rm -rf {} +
