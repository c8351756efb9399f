#!/usr/bin/env bash
# Build (or reuse) the "golden" base image and print GOLDEN=<path>.
#
# A raw ext4 image (default 64 MiB, E2E_GOLDEN_MB) made with `mkfs.ext4 -d` from a busybox
# root. Everything that could vary is pinned (UUID, hash seed, mkfs time via
# E2FSPROGS_FAKE_TIME, file mtimes), so the same inputs give the same bytes.
#
# The image's /sbin/init is the guest half of the test protocol, identical under QEMU (via
# the initramfs) and UML (root=/dev/ubda directly):
#   - mounts proc/sys/devtmpfs and a tmpfs on /tmp;
#   - takes the per-boot script from the kernel command line, `e2e_script=<base64>` (so
#     one image serves every test without being modified), else runs /etc/e2e/default.sh;
#   - prints "E2E-BEGIN", the script's output, then "E2E-END rc=<exit code>" on the console;
#   - syncs, remounts / read-only (the journal is committed and the fs marked clean, so
#     the overlay's merged view passes `e2fsck -fn`), and powers off with `poweroff -f`.
# Treat the cached file as read-only: tests copy it before serving it.
source "$(dirname "$0")/lib.sh"
e2e_need_busybox
command -v mkfs.ext4 >/dev/null || e2e_die "mkfs.ext4 missing (apt-get install e2fsprogs)"

SIZE_MB=${E2E_GOLDEN_MB:-64}
key=$(e2e_key "$E2E_DIR/golden-image.sh" "$E2E_DIR/lib.sh" "$E2E_BUSYBOX" <(echo "$SIZE_MB"; mkfs.ext4 -V 2>&1 | head -n1))
out=$E2E_CACHE/golden-$SIZE_MB-$key.img
if [[ -f $out ]]; then echo "GOLDEN=$out"; exit 0; fi

build() {
  [[ -f $out ]] && return 0
  local tmp root
  tmp=$(e2e_scratch)
  root=$tmp/root
  mkdir -p "$root"/{dev,proc,sys,tmp,mnt,root,etc/e2e}
  e2e_install_busybox "$root"
  rm "$root/sbin" # the image has a real /sbin holding init
  mkdir -p "$root/sbin"

  cat >"$root/sbin/init" <<'EOF'
#!/bin/sh
# cownbd e2e guest init (see scripts/e2e/golden-image.sh).
export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
script=
for arg in $(cat /proc/cmdline); do
  case $arg in e2e_script=*) script=${arg#e2e_script=} ;; esac
done
if [ -n "$script" ]; then
  echo "$script" | base64 -d >/tmp/e2e.sh
else
  cp /etc/e2e/default.sh /tmp/e2e.sh
fi
echo "E2E-BEGIN"
/bin/sh /tmp/e2e.sh
rc=$?
echo "E2E-END rc=$rc"
sync
umount /tmp
mount -o remount,ro / || echo "E2E-WARN: remount ro failed"
sync
poweroff -f
EOF
  chmod 755 "$root/sbin/init"
  cat >"$root/etc/e2e/default.sh" <<'EOF'
echo "golden: $(cat /etc/golden-release)"
uname -sr
EOF
  echo "cownbd-e2e golden v1" >"$root/etc/golden-release"
  echo "e2e" >"$root/etc/hostname"

  find "$root" -exec touch -h -d @1600000000 {} +
  truncate -s "${SIZE_MB}M" "$tmp/golden.img"
  # 4 KiB blocks, no lazy init (lazy init would keep writing after the first mount and
  # make every boot dirty far more of the overlay than the test itself).
  E2FSPROGS_FAKE_TIME=1600000000 mkfs.ext4 -q -F -L golden -b 4096 \
    -U 6f1c2d3e-0000-4000-8000-00000000e2e0 \
    -E hash_seed=6f1c2d3e-0000-4000-8000-00000000e2e1,lazy_itable_init=0,lazy_journal_init=0 \
    -d "$root" "$tmp/golden.img"
  # mkfs -d copies each file's ctime, which no one can set on the host side; pin it here.
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | sed 's|^\.||') |
    awk '{ print "set_inode_field \"" $0 "\" ctime @1600000000" }
         END { print "set_inode_field / ctime @1600000000";
               print "set_inode_field /lost+found ctime @1600000000" }' >"$tmp/pin.cmds"
  E2FSPROGS_FAKE_TIME=1600000000 debugfs -w -f "$tmp/pin.cmds" "$tmp/golden.img" >/dev/null 2>&1 ||
    e2e_die "debugfs could not pin ctimes"
  e2fsck -fn "$tmp/golden.img" >/dev/null 2>&1 || e2e_die "fresh golden image fails e2fsck"
  touch -d @1600000000 "$tmp/golden.img"
  rm -f "$E2E_CACHE"/golden-$SIZE_MB-*.img # superseded builds
  mv "$tmp/golden.img" "$out"
  rm -rf "$tmp"
}
e2e_locked build
echo "GOLDEN=$out"
