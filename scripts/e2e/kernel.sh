#!/usr/bin/env bash
# Locate (or fetch) a Debian cloud kernel for the QEMU boot tests and print, one per line:
#   KVER=<version>  VMLINUZ=<path>  MODULES=<dir holding kernel/…/*.ko>
#
# Order of preference:
#   1. $E2E_VMLINUZ + $E2E_MODULES (explicit override);
#   2. an installed /boot/vmlinuz-*-cloud-amd64 with its /lib/modules/<ver>;
#   3. the linux-image-<ver>-cloud-amd64 .deb fetched with `apt-get download` and unpacked
#      into $E2E_CACHE/kernel/<ver>/. This never touches /boot or the host's module tree,
#      needs no initramfs-tools, and works without root (apt-get update needs root).
# The host never boots this kernel; QEMU does (-kernel).
source "$(dirname "$0")/lib.sh"

emit() { printf 'KVER=%s\nVMLINUZ=%s\nMODULES=%s\n' "$1" "$2" "$3"; }

if [[ -n ${E2E_VMLINUZ:-} ]]; then
  [[ -f $E2E_VMLINUZ && -d ${E2E_MODULES:-} ]] || e2e_die "E2E_VMLINUZ needs E2E_MODULES (a modules dir)"
  emit "$(basename "$E2E_MODULES")" "$E2E_VMLINUZ" "$E2E_MODULES"
  exit 0
fi

for vmlinuz in $(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V -r); do
  kver=${vmlinuz#/boot/vmlinuz-}
  if [[ -d /lib/modules/$kver/kernel ]]; then emit "$kver" "$vmlinuz" "/lib/modules/$kver"; exit 0; fi
done

# The metapackage depends on exactly one versioned image package.
resolve_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9].*-cloud-amd64/ { print $2; exit }'
}

# Reuse any unpacked kernel first (offline re-runs must not need apt).
cached=$(ls -1d "$E2E_CACHE"/kernel/*-cloud-amd64/root 2>/dev/null | sort -V -r | head -n1 || true)
if [[ -n $cached && -d $cached/boot ]]; then
  kver=$(basename "$(dirname "$cached")")
  emit "$kver" "$cached/boot/vmlinuz-$kver" "$cached/lib/modules/$kver"
  exit 0
fi
pkg=$(resolve_pkg || true)
if [[ -z $pkg && -z $cached && $(id -u) -eq 0 ]]; then
  e2e_log "apt metadata lacks linux-image-cloud-amd64; running apt-get update"
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  pkg=$(resolve_pkg || true)
fi
if [[ -n $pkg ]]; then
  kver=${pkg#linux-image-}
  dest=$E2E_CACHE/kernel/$kver
  if [[ ! -f $dest/root/boot/vmlinuz-$kver ]]; then
    fetch() {
      [[ -f $dest/root/boot/vmlinuz-$kver ]] && return 0
      local tmp; tmp=$(e2e_scratch)
      e2e_log "downloading $pkg"
      # apt's sandbox user cannot write into root-owned temp dirs; that only costs a warning.
      (cd "$tmp" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
      local deb; deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n1 || true)
      [[ -n $deb ]] || { rm -rf "$tmp"; e2e_die "apt-get download $pkg failed"; }
      dpkg-deb -x "$deb" "$tmp/root"
      rm -f "$deb"
      mkdir -p "$dest"
      rm -rf "$dest/root"
      mv "$tmp/root" "$dest/root"
      rm -rf "$tmp"
    }
    e2e_locked fetch
  fi
  cached=$dest/root
fi
[[ -n $cached && -d $cached/boot ]] ||
  e2e_die "no cloud kernel: install linux-image-cloud-amd64 or set E2E_VMLINUZ/E2E_MODULES"
kver=$(basename "$(dirname "$cached")")
emit "$kver" "$cached/boot/vmlinuz-$kver" "$cached/lib/modules/$kver"
