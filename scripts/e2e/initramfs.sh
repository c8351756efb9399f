#!/usr/bin/env bash
# Build (or reuse) a tiny initramfs for the cloud kernel and print INITRD=<path>.
#
# The Debian cloud kernel has ext4 built in but virtio_blk/virtio_pci as modules, so the
# initramfs carries busybox plus exactly those modules and their dependencies (resolved from
# each module's own `depends=` modinfo field, because an unpacked .deb has no modules.dep),
# loads them in dependency order, waits for the root device, mounts it and switch_roots.
# Any failure prints an E2E-INITRAMFS-FAIL line and powers off, so a broken boot ends in
# seconds instead of a hung VM.
#
#   usage: initramfs.sh   (reads KVER/MODULES from kernel.sh)
source "$(dirname "$0")/lib.sh"
e2e_need_busybox

eval "$("$E2E_DIR/kernel.sh")"
WANT_MODULES=(virtio_pci virtio_blk)

key=$(e2e_key "$E2E_DIR/initramfs.sh" "$E2E_DIR/lib.sh" "$E2E_BUSYBOX" <(echo "$KVER ${WANT_MODULES[*]}"))
out=$E2E_CACHE/initramfs-$KVER-$key.cpio.gz
if [[ -f $out ]]; then echo "INITRD=$out"; exit 0; fi

# Path of a module file (any compression) by module name; '-' and '_' are equivalent.
find_module() {
  local name=${1//-/_} alt=${1//_/-}
  find "$MODULES/kernel" \( -name "$name.ko" -o -name "$name.ko.*" -o -name "$alt.ko" -o -name "$alt.ko.*" \) |
    head -n1
}

# Print the module's dependencies (comma list in the .modinfo section).
module_deps() {
  local f=$1
  case $f in
    *.ko.xz) xz -dc "$f" ;;
    *.ko.zst) zstd -qdc "$f" ;;
    *.ko.gz) gzip -dc "$f" ;;
    *) cat "$f" ;;
  esac | tr '\0' '\n' | LC_ALL=C grep -a '^depends=' | head -n1 | cut -d= -f2 | tr ',' ' '
}

build() {
  [[ -f $out ]] && return 0
  local tmp root
  tmp=$(e2e_scratch)
  root=$tmp/root
  mkdir -p "$root"/{dev,proc,sys,newroot,lib/modules}
  e2e_install_busybox "$root"

  # Depth-first post-order: dependencies land in load.order before their users.
  declare -A seen=()
  visit() {
    local m=$1 f d
    [[ -n ${seen[$m]:-} ]] && return 0
    seen[$m]=1
    f=$(find_module "$m")
    [[ -n $f ]] || e2e_die "module $m not found under $MODULES (built in? then drop it from WANT_MODULES)"
    for d in $(module_deps "$f"); do visit "$d"; done
    case $f in
      *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
      *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/load.order"
  }
  local m
  for m in "${WANT_MODULES[@]}"; do visit "$m"; done
  e2e_log "initramfs modules: $(tr '\n' ' ' <"$root/lib/modules/load.order")"

  cat >"$root/init" <<'EOF'
#!/bin/sh
# cownbd e2e initramfs: load virtio modules, mount root=, switch_root to its /sbin/init.
export PATH=/bin
fail() { echo "E2E-INITRAMFS-FAIL: $*"; sleep 1; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load.order); do
  insmod /lib/modules/$m.ko || fail "insmod $m"
done
root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case $arg in root=/dev/*) root=${arg#root=} ;; esac
done
# TCG is slow: give the virtio probe up to 30 s.
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1)); [ $i -gt 300 ] && fail "no block device $root"
  sleep 0.1
done
mount -t ext4 -o rw "$root" /newroot || fail "mount $root"
[ -x /newroot/sbin/init ] || fail "no /sbin/init on $root"
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /sys
umount /proc
exec switch_root /newroot /sbin/init
EOF
  chmod 755 "$root/init"
  find "$root" -exec touch -h -d @0 {} +
  (cd "$root" && find . | LC_ALL=C sort | "$E2E_BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -9n >"$tmp/initrd"
  rm -f "$E2E_CACHE"/initramfs-$KVER-*.cpio.gz # superseded builds
  mv "$tmp/initrd" "$out"
  rm -rf "$tmp"
}
e2e_locked build
echo "INITRD=$out"
