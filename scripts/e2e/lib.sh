# shellcheck shell=bash
# Shared helpers for the end-to-end builders (sourced, not executed).
#
# Design: every builder writes its product into $E2E_CACHE under a name that contains a
# content key (hash of the inputs: the builder scripts, busybox, the kernel version), so a
# second run reuses it and a changed builder never reuses a stale product. Builds happen in a
# private temp dir and are renamed into place, and a flock on the cache serialises concurrent
# runs (two vitest workers may prepare at the same time).

set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_CACHE=${E2E_CACHE:-/var/tmp/cownbd-e2e}
mkdir -p "$E2E_CACHE"

e2e_log() { printf '[e2e] %s\n' "$*" >&2; }
e2e_die() { printf '[e2e] ERROR: %s\n' "$*" >&2; exit 1; }

# e2e_key FILE... -> 12 hex chars identifying the contents of the given files.
e2e_key() { cat "$@" | sha256sum | cut -c1-12; }

# Run "$@" while holding the cache lock (bounded: a wedged holder makes us fail, not hang).
e2e_locked() {
  local fd
  exec {fd}>"$E2E_CACHE/.lock"
  flock -w 600 "$fd" || e2e_die "timed out waiting for $E2E_CACHE/.lock"
  "$@"
  local rc=$?
  exec {fd}>&-
  return $rc
}

# A fresh scratch dir inside the cache (same filesystem, so the final mv is atomic).
e2e_scratch() { mktemp -d "$E2E_CACHE/.build.XXXXXX"; }

E2E_BUSYBOX=${E2E_BUSYBOX:-/bin/busybox}
e2e_need_busybox() {
  [[ -x $E2E_BUSYBOX ]] || e2e_die "$E2E_BUSYBOX missing (apt-get install busybox-static)"
  # A dynamically linked busybox would need its libraries inside the guest.
  # (The ELF program interpreter path sits in the first KiB of a dynamic executable.)
  if head -c 1024 "$E2E_BUSYBOX" | LC_ALL=C grep -qa 'ld-linux'; then
    e2e_die "$E2E_BUSYBOX is dynamically linked; install busybox-static"
  fi
}

# Populate DIR/bin with busybox and a symlink per applet.
e2e_install_busybox() {
  local root=$1 applet
  mkdir -p "$root/bin"
  cp "$E2E_BUSYBOX" "$root/bin/busybox"
  for applet in $("$E2E_BUSYBOX" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done
  ln -sf bin "$root/sbin"
}

# e2e_guest_payload SCRIPT -> the guest script, base64, for `e2e_script=` on the kernel
# command line (COMMAND_LINE_SIZE is 2048 on x86; leave room for the fixed part).
e2e_guest_payload() {
  local payload
  payload=$(base64 -w0 <"$1")
  ((${#payload} < 1700)) || e2e_die "guest script too long for the kernel command line (${#payload} base64 bytes)"
  printf '%s' "$payload"
}

# e2e_boot_result NAME EXIT_CODE CONSOLE_LOG: print the console (CRs stripped) and exit
# like the boot scripts promise: the guest script's status from "E2E-END rc=N", 124 on a
# timeout (timeout(1) exit 124, or 137 after its -k kill), 125 when the marker is missing.
e2e_boot_result() {
  local name=$1 code=$2 log=$3 rc
  tr -d '\r' <"$log"
  if ((code == 124 || code == 137)); then
    e2e_log "$name boot timed out"
    exit 124
  fi
  rc=$(tr -d '\r' <"$log" | sed -n 's/.*E2E-END rc=\([0-9][0-9]*\).*/\1/p' | tail -n1)
  if [[ -z $rc ]]; then
    e2e_log "$name ended without E2E-END (exit $code)"
    exit 125
  fi
  exit "$rc"
}
