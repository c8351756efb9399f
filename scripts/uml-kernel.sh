#!/usr/bin/env bash
# Make sure the tests get a `linux.uml` that boots on this host; print a directory to put
# first on PATH when the system's does not (nothing when it does).
#
# Why: Debian 12's user-mode-linux (6.1) and 13's (6.12) panic at the first user process
# ("ptrace set fp regs failed, errno = 14") on hosts whose CPUs have AMX: the host's XSAVE
# area is larger than the fixed buffer those UML versions hand to PTRACE_SETREGSET, and
# the host kernel rejects a short buffer with EFAULT. Newer UML sizes the buffer from the
# host. So when the probe below fails we take linux.uml and the C library it was built
# against from Debian unstable (`apt-get download`, never installed), point the binary's
# ELF interpreter at that library with patchelf, and keep both under build/uml-unstable/.
#
# The probe boots UML with the host's / as a read-only hostfs root and a one-line init
# that prints a marker: ~1 s, and it exercises exactly the failing path (the first user
# process's FP registers).
set -euo pipefail
cd "$(dirname "$0")/.."

probe() { # $1 = linux.uml binary; succeeds when it ran a user process
  local dir init out
  dir=$(mktemp -d -t uml-probe-XXXXXX)
  init="$dir/init.sh"
  printf '#!/bin/sh\necho UML-PROBE-OK\n' >"$init"
  chmod +x "$init"
  out=$(TMPDIR="$dir" timeout -k 5 60 "$1" mem=64M root=/dev/root rootfstype=hostfs rootflags=/ ro \
        init="$init" con=null con0=null,fd:1 2>&1 </dev/null || true)
  rm -rf "$dir"
  grep -q UML-PROBE-OK <<<"$out"
}

command -v linux.uml >/dev/null || exit 0 # test.sh installs it; tests report it missing
probe linux.uml && exit 0

root="$PWD/build/uml-unstable"
bin="$root/bin/linux.uml"
if [[ ! -x "$bin" ]] || ! probe "$bin"; then
  echo "uml-kernel.sh: Debian's linux.uml cannot run user processes on this CPU; fetching user-mode-linux from Debian unstable" >&2
  rm -rf "$root"
  mkdir -p "$root/lists/partial" "$root/debs" "$root/bin"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" >"$root/sources.list"
  apt_opts=(-q -o "Dir::Etc::sourcelist=$root/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$root/lists")
  apt-get "${apt_opts[@]}" update >/dev/null
  (cd "$root/debs" && apt-get "${apt_opts[@]}" download user-mode-linux libc6 >/dev/null 2>&1)
  for deb in "$root"/debs/*.deb; do dpkg-deb -x "$deb" "$root/x"; done
  libdir="$root/x/usr/lib/x86_64-linux-gnu"
  cp "$root/x/usr/bin/linux.uml" "$bin"
  patchelf --set-interpreter "$libdir/ld-linux-x86-64.so.2" --set-rpath "$libdir" "$bin"
  probe "$bin" || { echo "uml-kernel.sh: the unstable linux.uml does not boot either" >&2; exit 1; }
fi
echo "$root/bin"
