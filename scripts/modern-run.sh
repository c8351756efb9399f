#!/usr/bin/env bash
# Run one of today's NBD clients from the cached trixie root (scripts/modern-root.sh)
# against a cownbd on this host:
#
#   bash scripts/modern-run.sh nbdinfo --json nbd://127.0.0.1:10809/
#
# The tool runs in `chroot ROOT` inside a private mount namespace (unshare --mount):
# ROOT itself is bind-mounted read-only (tests cannot change the cached root), with the
# host's /proc, /dev and /tmp (plus $TMPDIR, and every directory in the colon-separated
# COWNBD_MODERN_BIND) bind-mounted at the same paths, so absolute paths of a test's temp
# files and Unix sockets mean the same inside and out. The network namespace is the
# host's, so 127.0.0.1 reaches the server. Every mount belongs to the namespace, which
# dies with the tool: a killed test cannot leak mounts. Each step execs the next
# (unshare → bash → chroot → TOOL), so the PID the caller holds is the tool's.
#
# Not root: falls back to `unshare --map-root-user` (a user namespace), where chroot
# and bind mounts are allowed too.
set -euo pipefail

ROOT=${COWNBD_MODERN_ROOT:-/var/cache/cownbd/${COWNBD_MODERN_SUITE:-trixie}-root}

if [[ ${1:-} == --inside-namespace ]]; then
  shift
  mount --bind "$ROOT" "$ROOT"
  mount -o remount,bind,ro "$ROOT"
  mount --rbind /proc "$ROOT/proc"
  mount --rbind /dev "$ROOT/dev"
  binds=(/tmp)
  [[ -n ${TMPDIR:-} && ${TMPDIR%/} != /tmp ]] && binds+=("$TMPDIR")
  IFS=: read -r -a extra <<<"${COWNBD_MODERN_BIND:-}"
  binds+=("${extra[@]}")
  for d in "${binds[@]}"; do
    [[ -n $d && -d $d ]] || continue
    # The mount point must already exist in the (read-only) root; /tmp does.
    [[ -d "$ROOT$d" ]] || { echo "modern-run: $d has no mount point in $ROOT (only paths under /tmp, or existing ones, can be bound)" >&2; exit 1; }
    mount --rbind "$d" "$ROOT$d"
  done
  # Start in the caller's directory when it exists inside (relative paths keep working).
  wd=/
  [[ -d "$ROOT$PWD" ]] && wd=$PWD
  exec chroot "$ROOT" /usr/bin/env -C "$wd" HOME=/tmp "$@"
fi

if [[ $# -eq 0 ]]; then
  echo "usage: modern-run.sh TOOL [ARGS...]" >&2
  exit 2
fi
if [[ ! -f "$ROOT/.cownbd-root-stamp" ]]; then
  echo "modern-run: no modern root at $ROOT (run scripts/modern-root.sh as root)" >&2
  exit 1
fi
userns=()
[[ $(id -u) -ne 0 ]] && userns=(--map-root-user)
exec unshare --mount --propagation private "${userns[@]}" -- bash "$0" --inside-namespace "$@"
