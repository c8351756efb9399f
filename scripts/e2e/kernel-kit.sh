#!/usr/bin/env bash
# Build (or reuse) the kernel-client guest kit and print KIT_INITRD=<path>.
#
# The kit is an initramfs for the Debian cloud kernel (kernel.sh) in which the guest is an
# NBD *client*: the kernel's nbd driver, Debian's nbd-client and mke2fs (copied with the
# libraries `ldd` names and the dynamic loader), busybox, and vport-bridge (a tiny static C
# program, compiled here with `cc -static`) that joins nbd-client's Unix socket to the
# virtio-serial ports QEMU offers, because the guest has no IP networking at all.
#
# /init loads virtio_pci, virtio_console and nbd (dependencies from each module's own
# `depends=` field), names the ports under /dev/virtio-ports/, and then either
#   - sources /e2e/boot.sh in PID 1 (root on NBD: it attaches /dev/nbd0 and switch_roots), or
#   - runs /e2e/steps.sh between the E2E-BEGIN / "E2E-END rc=N" markers and powers off.
# Those files come from a second cpio archive the test appends to this one per boot (the
# kernel unpacks concatenated archives in order), so the kit itself never changes per test.
# Guest helpers for the steps live in /lib/kit.sh. See docs/kernel-client.md.
#
#   usage: kernel-kit.sh   (reads KVER/MODULES from kernel.sh)
source "$(dirname "$0")/lib.sh"
e2e_need_busybox

eval "$("$E2E_DIR/kernel.sh")"
WANT_MODULES=(virtio_pci virtio_console nbd)
TOOLS=(/usr/sbin/nbd-client /usr/sbin/mke2fs)
for t in "${TOOLS[@]}"; do [[ -x $t ]] || e2e_die "$t missing (apt-get install nbd-client e2fsprogs)"; done
command -v cc >/dev/null || e2e_die "cc missing (apt-get install gcc libc6-dev)"

key=$(e2e_key "$E2E_DIR/kernel-kit.sh" "$E2E_DIR/lib.sh" "$E2E_DIR/kit/vport-bridge.c" "$E2E_BUSYBOX" "${TOOLS[@]}" \
  <(echo "$KVER ${WANT_MODULES[*]}"))
out=$E2E_CACHE/kernel-kit-$KVER-$key.cpio.gz
if [[ -f $out ]]; then echo "KIT_INITRD=$out"; exit 0; fi

find_module() {
  local name=${1//-/_} alt=${1//_/-}
  find "$MODULES/kernel" \( -name "$name.ko" -o -name "$name.ko.*" -o -name "$alt.ko" -o -name "$alt.ko.*" \) | head -n1
}
module_deps() {
  case $1 in
    *.ko.xz) xz -dc "$1" ;; *.ko.zst) zstd -qdc "$1" ;; *.ko.gz) gzip -dc "$1" ;; *) cat "$1" ;;
  esac | tr '\0' '\n' | LC_ALL=C grep -a '^depends=' | head -n1 | cut -d= -f2 | tr ',' ' '
}

# Copy an executable with every library ldd names (and the loader) to the same paths.
copy_with_libs() {
  local root=$1 exe=$2 lib
  mkdir -p "$root$(dirname "$exe")"
  cp -L "$exe" "$root$exe"
  for lib in $(ldd "$exe" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

build() {
  [[ -f $out ]] && return 0
  local tmp root m
  tmp=$(e2e_scratch)
  root=$tmp/root
  mkdir -p "$root"/{dev,proc,sys,run,tmp,mnt,newroot,etc,e2e,lib/modules,usr/sbin}
  e2e_install_busybox "$root"
  # Debian's /lib64 and /lib/x86_64-linux-gnu hold the loader and libraries ldd names.
  for t in "${TOOLS[@]}"; do copy_with_libs "$root" "$t"; done
  ln -s mke2fs "$root/usr/sbin/mkfs.ext4"
  cp /etc/mke2fs.conf "$root/etc/mke2fs.conf" # without it `-t ext4` is an unknown type
  cc -static -O2 -Wall -o "$root/bin/vport-bridge" "$E2E_DIR/kit/vport-bridge.c"

  declare -A seen=()
  visit() {
    local m=$1 f d
    [[ -n ${seen[$m]:-} ]] && return 0
    seen[$m]=1
    f=$(find_module "$m")
    [[ -n $f ]] || e2e_die "module $m not found under $MODULES"
    for d in $(module_deps "$f"); do visit "$d"; done
    case $f in
      *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
      *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/load.order"
  }
  for m in "${WANT_MODULES[@]}"; do visit "$m"; done
  e2e_log "kernel kit modules: $(tr '\n' ' ' <"$root/lib/modules/load.order")"

  cat >"$root/lib/kit.sh" <<'EOF'
# Guest helpers for /e2e/steps.sh and /e2e/boot.sh (busybox sh).
# bridge SOCKET PORT_NAME...: serve nbd-client's Unix socket SOCKET over the named ports.
bridge() {
  local sock=$1 devs= p
  shift
  for p in "$@"; do devs="$devs /dev/virtio-ports/$p"; done
  vport-bridge "$sock" $devs &
  while [ ! -S "$sock" ]; do sleep 0.05; done
}
# host CMD: ask the test on the host to do CMD (stop the server, ...) and wait until it is
# done, over the control port "ctl": the host greets with "hello" once it is attached (reads
# are empty until then, see vport-bridge.c), then answers "done CMD".
host() {
  local l=
  exec 3<>/dev/virtio-ports/ctl
  until [ "$l" = hello ]; do read -r l <&3 || sleep 0.05; done
  echo "$1" >&3
  until [ "$l" = "done $1" ]; do read -r l <&3 || sleep 0.05; done
  exec 3>&-
}
EOF

  cat >"$root/init" <<'EOF'
#!/bin/sh
# cownbd kernel-client kit init (scripts/e2e/kernel-kit.sh).
export PATH=/bin:/usr/sbin
fail() { echo "E2E-KIT-FAIL: $*"; sleep 1; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
nbd_params=
ports=0
for arg in $(cat /proc/cmdline); do
  case $arg in
    kit_ports=*) ports=${arg#kit_ports=} ;;
    kit_nbd=*) nbd_params=$(echo "${arg#kit_nbd=}" | tr ',' ' ') ;;
  esac
done
for m in $(cat /lib/modules/load.order); do
  if [ "$m" = nbd ]; then insmod /lib/modules/nbd.ko $nbd_params || fail "insmod nbd"
  else insmod /lib/modules/$m.ko || fail "insmod $m"; fi
done
# TCG is slow: give the virtio-serial probe up to 30 s to show every port.
i=0
while [ "$(ls /sys/class/virtio-ports 2>/dev/null | wc -l)" -lt "$ports" ]; do
  i=$((i + 1)); [ $i -gt 300 ] && fail "only $(ls /sys/class/virtio-ports | wc -l) of $ports virtio ports"
  sleep 0.1
done
mkdir -p /dev/virtio-ports
for d in /sys/class/virtio-ports/*; do
  [ -e "$d/name" ] && ln -sf "/dev/${d##*/}" "/dev/virtio-ports/$(cat "$d/name")"
done
. /lib/kit.sh
if [ -f /e2e/boot.sh ]; then
  . /e2e/boot.sh
  fail "/e2e/boot.sh returned"
fi
echo "E2E-BEGIN"
/bin/sh -e -c '. /lib/kit.sh; . /e2e/steps.sh'
rc=$?
echo "E2E-END rc=$rc"
sync
poweroff -f
EOF
  chmod 755 "$root/init"
  find "$root" -exec touch -h -d @0 {} +
  (cd "$root" && find . | LC_ALL=C sort | "$E2E_BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -6n >"$tmp/initrd"
  rm -f "$E2E_CACHE"/kernel-kit-$KVER-*.cpio.gz # superseded builds
  mv "$tmp/initrd" "$out"
  rm -rf "$tmp"
}
e2e_locked build
echo "KIT_INITRD=$out"
