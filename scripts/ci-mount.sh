#!/usr/bin/env bash
# ci-mount.sh — mount a filesystem that lives on an NBD export, without the kernel nbd module.
#
# Many CI runners (containers, cloud VMs with stripped kernels) have no nbd.ko, but do have
# FUSE and loop devices. This chains user-space pieces instead:
#
#   NBD server ──► qemu-storage-daemon (NBD client) ──► FUSE export: a regular file
#              ──► losetup (block device) ──► mount
#
# Usage:
#   ci-mount.sh attach [-r] [-o MOUNT_OPTS] [-t FSTYPE] [-p PART] URI MOUNTPOINT
#   ci-mount.sh detach [-f] [--fsck] MOUNTPOINT
#   ci-mount.sh detach-all            # CI teardown: detach everything this tool attached
#   ci-mount.sh status MOUNTPOINT     # prints DEVICE=, DISK=, QSD_PID=, URI= (exit 1 if none)
#   ci-mount.sh list
#
# URI: nbd://HOST[:PORT]/EXPORT (port 10809 by default) or nbd+unix:///EXPORT?socket=PATH.
# Options: -r read-only all the way down; -o/-t passed to mount; -p N mounts partition N
# (losetup -P); detach -f falls back to a lazy unmount if the filesystem is busy;
# detach --fsck runs `fsck -f -n` on the device after unmounting and fails when it reports errors.
# detach always tears everything down; it exits non-zero when data may be lost (the final
# flush to the server failed) or fsck complained.
#
# Requirements: root (or CAP_SYS_ADMIN), /dev/fuse, loop devices, qemu-storage-daemon with
# FUSE export support (Debian: qemu-system-common or qemu-storage-daemon, plus fuse3).
# State lives in $CI_MOUNT_STATE_DIR (default /run/ci-mount), one dir per mountpoint.
#
# Teardown order matters for data: unmount (the fs flushes to the loop device), detach the
# loop device, fsync the FUSE file (QEMU then sends NBD FLUSH to the server), unmount the FUSE
# file, stop the daemon. qemu-storage-daemon does not remove its FUSE mount itself when it
# is killed, so we do it first. A failed attach runs the same teardown for what it created.
set -euo pipefail

STATE_ROOT=${CI_MOUNT_STATE_DIR:-/run/ci-mount}
QSD=${QSD:-qemu-storage-daemon}
ATTACH_TIMEOUT=${CI_MOUNT_TIMEOUT:-30}

die() { printf 'ci-mount: %s\n' "$*" >&2; exit 1; }
note() { printf 'ci-mount: %s\n' "$*" >&2; }

usage() { sed -n '/^# Usage:/,/^# URI:/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# State dir for a mountpoint: keyed by its absolute path.
state_dir() { printf '%s/%s' "$STATE_ROOT" "$(printf '%s' "$1" | sha256sum | cut -c1-16)"; }

abs_path() { realpath -m -- "$1"; }

# Escape a value for QEMU's key=value option syntax (a comma is written as two).
qopt() { printf '%s' "${1//,/,,}"; }

# Parse URI into the --blockdev option string for QEMU's NBD client.
nbd_blockdev() {
  local uri=$1 rest host port name sock
  case $uri in
    nbd://*)
      rest=${uri#nbd://}
      [[ $rest == */* ]] && name=${rest#*/} || name=
      rest=${rest%%/*}
      if [[ $rest == \[*\]* ]]; then # [ipv6]:port
        host=${rest%%]*}; host=${host#[}; port=${rest##*]}; port=${port#:}
      else
        host=${rest%%:*}; port=${rest#"$host"}; port=${port#:}
      fi
      [[ -n $host ]] || die "URI $uri: missing host"
      port=${port:-10809}
      [[ $port =~ ^[0-9]+$ ]] || die "URI $uri: bad port '$port'"
      printf 'driver=nbd,server.type=inet,server.host=%s,server.port=%s' "$(qopt "$host")" "$port"
      ;;
    nbd+unix://*)
      rest=${uri#nbd+unix://}
      [[ $rest == /* || $rest == '' ]] || die "URI $uri: nbd+unix URIs have no host (nbd+unix:///EXPORT?socket=PATH)"
      name=${rest%%\?*}; name=${name#/}
      sock=$(sed -n 's/.*[?&]socket=\([^&]*\).*/\1/p' <<<"$rest")
      [[ -n $sock ]] || die "URI $uri: missing ?socket=PATH"
      printf 'driver=nbd,server.type=unix,server.path=%s' "$(qopt "$sock")"
      ;;
    *) die "unsupported URI '$uri' (want nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)" ;;
  esac
  # Percent-encoded export names (e.g. %2F) are decoded as in the NBD URI spec.
  name=$(printf '%b' "${name//%/\\x}")
  [[ -n $name ]] && printf ',export=%s' "$(qopt "$name")"
  return 0
}

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# Tear down whatever exists under state dir $1 (idempotent; every step tolerates absence).
teardown() {
  local sd=$1 force=${2:-0} fsck=${3:-0} mp dev disk pid rc=0 i
  mp=$(cat "$sd/mountpoint" 2>/dev/null || true)
  dev=$(cat "$sd/device" 2>/dev/null || true)
  disk=$sd/disk
  pid=$(cat "$sd/qsd.pid" 2>/dev/null || true)

  if [[ -n $mp ]] && is_mounted "$mp"; then
    for i in 1 2 3 4 5; do
      umount "$mp" 2>/dev/null && break
      sleep 0.5
    done
    if is_mounted "$mp"; then
      if ((force)); then
        note "$mp is busy; lazy unmount"
        umount -l "$mp"
      else
        note "cannot unmount $mp: busy (detach -f unmounts lazily)"
        return 1
      fi
    fi
  fi
  if ((fsck)) && [[ -n $dev && -b $dev ]]; then
    # The fs was just unmounted: check what actually reached the device.
    blockdev --flushbufs "$dev" 2>/dev/null || true
    if ! fsck -f -n "$(cat "$sd/fsdev" 2>/dev/null || echo "$dev")" >&2; then
      note "fsck reported problems"
      rc=1
    fi
  fi
  if [[ -n $dev ]] && losetup "$dev" >/dev/null 2>&1 &&
    [[ $(losetup -nO BACK-FILE "$dev" 2>/dev/null | sed 's/ *$//') == "$disk"* ]]; then
    losetup -d "$dev" || note "losetup -d $dev failed"
  fi
  if findmnt -rn --mountpoint "$disk" >/dev/null 2>&1; then
    # Bounded: a server that stopped answering must not hang the CI job's teardown.
    if ! timeout 60 sync "$disk" 2>/dev/null; then
      note "fsync of $disk failed: data may not have reached the server"
      rc=1
    fi
    umount "$disk" 2>/dev/null || umount -l "$disk" 2>/dev/null || true
  fi
  if pid_alive "$pid" && grep -q qemu-storage "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then
      note "qemu-storage-daemon $pid ignored SIGTERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$sd"
  return $rc
}

cmd_attach() {
  local ro=0 opts='' fstype='' part='' opt
  OPTIND=1
  while getopts 'ro:t:p:' opt; do
    case $opt in
      r) ro=1 ;;
      o) opts=$OPTARG ;;
      t) fstype=$OPTARG ;;
      p) part=$OPTARG ;;
      *) usage ;;
    esac
  done
  shift $((OPTIND - 1))
  [[ $# -eq 2 ]] || usage
  local uri=$1 mp
  mp=$(abs_path "$2")
  [[ -n $part && ! $part =~ ^[0-9]+$ ]] && die "-p: partition number expected, got '$part'"

  command -v "$QSD" >/dev/null || die "$QSD not found (apt-get install qemu-system-common fuse3)"
  [[ -c /dev/fuse ]] || die "/dev/fuse missing (modprobe fuse, or run the container with --device /dev/fuse)"
  [[ $(id -u) -eq 0 ]] || die "must run as root (losetup and mount need it)"
  local blockdev
  blockdev=$(nbd_blockdev "$uri")

  mkdir -p "$mp" "$STATE_ROOT"
  # Global, not local: the EXIT trap below runs after this function's scope is gone.
  CI_SD=$(state_dir "$mp")
  local sd=$CI_SD
  if [[ -d $sd ]]; then
    if pid_alive "$(cat "$sd/qsd.pid" 2>/dev/null || true)"; then
      die "$mp is already attached (ci-mount.sh detach $mp first)"
    fi
    note "removing stale state for $mp"
    teardown "$sd" 1 || true
  fi
  is_mounted "$mp" && die "$mp is already a mountpoint"
  mkdir -p "$sd"
  printf '%s\n' "$mp" >"$sd/mountpoint"
  printf '%s\n' "$uri" >"$sd/uri"
  : >"$sd/disk"
  # From here on, any failure undoes everything created so far.
  trap 'rc=$?; if ((rc)); then note "attach failed; cleaning up"; teardown "$CI_SD" 1 || true; fi' EXIT

  local rw=on roflag=()
  ((ro)) && { rw=off; blockdev+=",read-only=on"; roflag=(-r); }
  # --daemonize returns only after the NBD connection and the FUSE export are up, and
  # reports their errors on stderr; timeout bounds a server that accepts but never answers.
  if ! timeout -k 5 "$ATTACH_TIMEOUT" "$QSD" \
    --blockdev "$blockdev,node-name=ci0" \
    --export "type=fuse,id=ci0e,node-name=ci0,mountpoint=$(qopt "$sd/disk"),writable=$rw" \
    --pidfile "$sd/qsd.pid" --daemonize 2>"$sd/qsd.log"; then
    die "qemu-storage-daemon could not connect to $uri: $(tr '\n' ' ' <"$sd/qsd.log")"
  fi
  [[ -s $sd/disk ]] || die "FUSE export of $uri is empty or not mounted"

  local dev
  dev=$(losetup -f --show "${roflag[@]}" ${part:+-P} "$sd/disk") || die "losetup failed"
  printf '%s\n' "$dev" >"$sd/device"
  local fsdev=$dev
  if [[ -n $part ]]; then
    fsdev=${dev}p$part
    local i
    for i in $(seq 50); do [[ -b $fsdev ]] && break; sleep 0.1; done
    [[ -b $fsdev ]] || die "partition $part not found on $dev"
  fi
  printf '%s\n' "$fsdev" >"$sd/fsdev"

  local mopts=()
  ((ro)) && opts=${opts:+$opts,}ro
  [[ -n $opts ]] && mopts+=(-o "$opts")
  [[ -n $fstype ]] && mopts+=(-t "$fstype")
  mount "${mopts[@]}" "$fsdev" "$mp" || die "mount $fsdev $mp failed"
  trap - EXIT
  note "attached $uri at $mp (device $fsdev)"
}

cmd_detach() {
  local force=0 fsck=0
  while [[ $# -gt 0 ]]; do
    case $1 in
      -f) force=1 ;;
      --fsck) fsck=1 ;;
      -*) usage ;;
      *) break ;;
    esac
    shift
  done
  [[ $# -eq 1 ]] || usage
  local mp sd
  mp=$(abs_path "$1")
  sd=$(state_dir "$mp")
  [[ -d $sd ]] || die "$mp was not attached by ci-mount.sh"
  teardown "$sd" "$force" "$fsck"
}

cmd_detach_all() {
  local sd rc=0
  for sd in "$STATE_ROOT"/*/; do
    [[ -d $sd ]] || continue
    teardown "${sd%/}" 1 || rc=1
  done
  return $rc
}

cmd_status() {
  [[ $# -eq 1 ]] || usage
  local sd
  sd=$(state_dir "$(abs_path "$1")")
  [[ -d $sd ]] || return 1
  printf 'DEVICE=%s\nDISK=%s\nQSD_PID=%s\nURI=%s\n' "$(cat "$sd/fsdev" 2>/dev/null)" "$sd/disk" \
    "$(cat "$sd/qsd.pid" 2>/dev/null)" "$(cat "$sd/uri" 2>/dev/null)"
}

cmd_list() {
  local sd
  for sd in "$STATE_ROOT"/*/; do
    [[ -f $sd/mountpoint ]] && printf '%s\t%s\t%s\n' "$(cat "$sd/mountpoint")" "$(cat "$sd/fsdev" 2>/dev/null)" "$(cat "$sd/uri")"
  done
  return 0
}

[[ $# -ge 1 ]] || usage
sub=$1
shift
case $sub in
  attach) cmd_attach "$@" ;;
  detach) cmd_detach "$@" ;;
  detach-all) cmd_detach_all ;;
  status) cmd_status "$@" ;;
  list) cmd_list ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
