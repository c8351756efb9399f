#!/usr/bin/env bash
# Boot the e2e guest under QEMU (TCG) with its root disk on an NBD export, run one script in
# the guest and power off.
#
#   boot-qemu.sh [-t SECONDS] [-l CONSOLE_LOG] NBD_URI GUEST_SCRIPT
#     NBD_URI       e.g. nbd://127.0.0.1:10809/vm1 or nbd+unix:///vm1?socket=/run/x.sock
#     GUEST_SCRIPT  a busybox-sh script file, run as root in the guest after boot
#
# Prints the guest's console (CRs stripped) on stdout. Exit status: the guest script's exit
# status when the guest reported it ("E2E-END rc=N"), 124 when the boot timed out (default
# 120 s; QEMU is killed), 125 when QEMU ended without the marker (crash, panic, bad root).
#
# The kernel command line is kept minimal for TCG: quiet, no KASLR, one UART, and panic=-1 so a
# panic ends the run (with -no-reboot) instead of hanging until the timeout.
#
# E2E_ACCEL (default tcg) selects the accelerator. Not auto-detected on purpose: a /dev/kvm
# that exists but cannot run guests (nested virtualisation off) hangs instead of failing.
# On runners with working KVM, E2E_ACCEL=kvm makes boots much faster (not measured here).
source "$(dirname "$0")/lib.sh"

timeout_s=120
log=
while getopts 't:l:' opt; do
  case $opt in
    t) timeout_s=$OPTARG ;;
    l) log=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 2 ]] || { echo "usage: $0 [-t SECONDS] [-l LOG] NBD_URI GUEST_SCRIPT" >&2; exit 2; }
uri=$1 script=$2
[[ -f $script ]] || e2e_die "guest script $script not found"

eval "$("$E2E_DIR/kernel.sh")"
eval "$("$E2E_DIR/initramfs.sh")"

own_log=
if [[ -z $log ]]; then log=$(mktemp); own_log=1; fi
cleanup() { [[ -n $own_log ]] && rm -f "$log"; return 0; }
trap cleanup EXIT

payload=$(e2e_guest_payload "$script")
append="console=ttyS0 root=/dev/vda rw quiet loglevel=3 panic=-1 nokaslr 8250.nr_uarts=1 e2e_script=$payload"

set +e
# -nodefaults: no NIC (no option ROM to load), no VGA; the serial port goes to a file so
# the log survives a kill. cache=writeback: guest flushes become NBD FLUSH commands.
timeout -k 5 "$timeout_s" qemu-system-x86_64 \
  -accel "${E2E_ACCEL:-tcg}" -m 256 -smp 1 -nodefaults -no-user-config -display none -no-reboot \
  -chardev "file,id=con0,path=$log" -serial chardev:con0 \
  -kernel "$VMLINUZ" -initrd "$INITRD" -append "$append" \
  -drive "file=$uri,format=raw,if=virtio,cache=writeback" \
  </dev/null >&2
qrc=$?
set -e
e2e_boot_result QEMU "$qrc" "$log"
