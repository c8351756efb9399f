#!/usr/bin/env bash
# Build (once) and cache a Debian trixie root holding today's NBD clients, for the
# modern test tier (test/modern/, docs/modern-clients.md). Debian 12's tools are from
# 2022–2023; trixie gives libnbd 1.22, nbdkit 1.42, qemu 10.0, nbd 3.26.
#
#   bash scripts/modern-root.sh          # build if needed, print the root's path + versions
#   COWNBD_MODERN_ROOT=/some/dir …       # cache somewhere else (default below)
#   COWNBD_MODERN_SUITE=sid …            # another Debian suite (root: /var/cache/cownbd/sid-root)
#   COWNBD_MODERN_REBUILD=1 …            # throw the cached root away and build again
#   bash scripts/modern-root.sh --status # current | stale | absent, builds nothing
#
# Idempotent and safe to interrupt:
# - the root is built in ROOT.tmp and renamed into place only when complete, so ROOT
#   either does not exist or is whole; a leftover ROOT.tmp (killed build) is deleted
#   and the build starts over;
# - ROOT/.cownbd-root-stamp records suite, mirror and package list; a root without
#   the stamp, or whose stamp differs from what this script asks for (someone changed
#   PACKAGES), is rebuilt;
# - the build runs in its own mount namespace (unshare --mount), so the /proc and /dev
#   mounts debootstrap and the package scripts make vanish with the process even when
#   it is killed: nothing stays mounted under the cache, and the `rm -rf` of a stale
#   root can never walk into the host's /dev (it also uses --one-file-system);
# - a lock (flock on ROOT.lock) serialises concurrent callers (parallel test workers).
#
# Prints the root's path as the LAST line of stdout (everything else goes to stderr).
set -euo pipefail

SUITE=${COWNBD_MODERN_SUITE:-trixie}
ROOT=${COWNBD_MODERN_ROOT:-/var/cache/cownbd/$SUITE-root}
MIRROR=${COWNBD_MODERN_MIRROR:-http://deb.debian.org/debian}
# fio is for the benchmark rows with extended headers (issue 27); gnutls-bin for certtool.
PACKAGES=(libnbd-bin python3-libnbd nbdkit qemu-utils qemu-block-extra nbd-client gnutls-bin fio)
STAMP_NAME=.cownbd-root-stamp

stamp_text() {
  printf 'suite=%s\nmirror=%s\npackages=%s\n' "$SUITE" "$MIRROR" "${PACKAGES[*]}"
}

print_versions() {
  local root=$1
  {
    echo "modern-root: $root ($SUITE)"
    chroot "$root" dpkg-query -W -f='  ${Package} ${Version}\n' "${PACKAGES[@]}"
  } >&2
}

is_current() {
  [[ -f "$1/$STAMP_NAME" ]] && [[ "$(cat "$1/$STAMP_NAME")" == "$(stamp_text)" ]]
}

# Delete a directory tree without ever crossing into a mounted filesystem.
remove_tree() {
  [[ -e "$1" ]] || return 0
  if findmnt -rno TARGET | grep -qF -- "$(realpath "$1")/"; then
    echo "modern-root: refusing to delete $1: something is mounted below it" >&2
    exit 1
  fi
  rm -rf --one-file-system -- "$1"
}

# Runs inside `unshare --mount`: debootstrap, then the packages, into $1.
build_into() {
  local dir=$1
  debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" >&2
  # No daemons start in the chroot (nbd-client's and nbdkit's maintainer scripts ask).
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod 755 "$dir/usr/sbin/policy-rc.d"
  mount -t proc proc "$dir/proc"
  mount --rbind /dev "$dir/dev"
  chroot "$dir" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2
  chroot "$dir" apt-get clean
  umount -R "$dir/dev" "$dir/proc"
  stamp_text >"$dir/$STAMP_NAME"
}

if [[ ${1:-} == --inside-namespace ]]; then
  build_into "$2"
  exit 0
fi
# --status: say whether ROOT is usable without building anything: "current", "stale"
# (stamped for another suite, mirror or package list) or "absent" (missing or never
# finished: no stamp).
if [[ ${1:-} == --status ]]; then
  if is_current "$ROOT"; then echo current
  elif [[ -f "$ROOT/$STAMP_NAME" ]]; then echo stale
  else echo absent
  fi
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  if is_current "$ROOT"; then print_versions "$ROOT" 2>/dev/null || true; echo "$ROOT"; exit 0; fi
  echo "modern-root: $ROOT is missing or stale and building it needs root (debootstrap)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "modern-root: debootstrap is not installed (scripts/test.sh installs it)" >&2; exit 1; }

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9

if [[ -n ${COWNBD_MODERN_REBUILD:-} ]] || ! is_current "$ROOT"; then
  remove_tree "$ROOT.tmp"
  started=$SECONDS
  echo "modern-root: building $SUITE root in $ROOT.tmp (packages: ${PACKAGES[*]})" >&2
  unshare --mount --propagation private -- bash "$0" --inside-namespace "$ROOT.tmp"
  # Swap: the old root (if any) moves aside first, so ROOT is never a half-built tree.
  remove_tree "$ROOT.old"
  [[ -e "$ROOT" ]] && mv -- "$ROOT" "$ROOT.old"
  mv -- "$ROOT.tmp" "$ROOT"
  remove_tree "$ROOT.old"
  echo "modern-root: built in $((SECONDS - started)) s" >&2
fi
print_versions "$ROOT"
echo "$ROOT"
