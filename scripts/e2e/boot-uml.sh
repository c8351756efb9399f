#!/usr/bin/env bash
# Boot the e2e guest under User-Mode Linux with its root on a UML cow overlay, run one
# script in the guest and power off (the UML half of the harness in docs/cow-format.md#vectors).
#
#   boot-uml.sh [-t SECONDS] [-l CONSOLE_LOG] COW[,BACKING] GUEST_SCRIPT
#
# `ubd0=COW,BACKING` makes UML create COW when it is missing; `ubd0=COW` alone uses the
# backing path stored in COW's header. UML checks the backing file's size and mtime against
# the header, so this also proves a cownbd-written header is acceptable to the kernel.
# Output and exit status as for boot-qemu.sh (124 timeout, 125 no E2E-END marker).
source "$(dirname "$0")/lib.sh"

timeout_s=60
log=
while getopts 't:l:' opt; do
  case $opt in
    t) timeout_s=$OPTARG ;;
    l) log=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 2 ]] || { echo "usage: $0 [-t SECONDS] [-l LOG] COW[,BACKING] GUEST_SCRIPT" >&2; exit 2; }
ubd=$1 script=$2
[[ -f $script ]] || e2e_die "guest script $script not found"
command -v linux.uml >/dev/null || e2e_die "linux.uml missing (apt-get install user-mode-linux)"

own_log=
if [[ -z $log ]]; then log=$(mktemp); own_log=1; fi
# UML keeps guest RAM in a file under TMPDIR; give it a private dir we always remove.
# /dev/shm (tmpfs) when usable: UML warns about, and is slower with, a disk-backed file.
shm=/dev/shm
[[ -d $shm && -w $shm ]] || shm=${TMPDIR:-/tmp}
umltmp=$(mktemp -d -p "$shm" cownbd-uml.XXXXXX)
cleanup() { rm -rf "$umltmp"; [[ -n $own_log ]] && rm -f "$log"; return 0; }
trap cleanup EXIT

payload=$(e2e_guest_payload "$script")

set +e
# con=null con0=fd:0,fd:1: only the console, on our stdout; stdin is /dev/null so UML never
# touches the caller's terminal. UML forks helper processes: timeout -k kills the group.
TMPDIR=$umltmp timeout -k 5 "$timeout_s" linux.uml mem=64M "ubd0=$ubd" root=/dev/ubda rw \
  con=null con0=fd:0,fd:1 quiet "e2e_script=$payload" </dev/null >"$log" 2>&1
urc=$?
set -e
e2e_boot_result UML "$urc" "$log"
