#!/usr/bin/env bash
# Build build/fsx.node (native/fsx.c: SEEK_DATA/SEEK_HOLE + fallocate for sparse raw files).
#
# Plain `cc`, no node-gyp: node-gyp would download Node's headers, and the addon only needs
# the Node-API headers from the `node-api-headers` npm package (ABI-stable across Node
# versions). The addon is optional: without a C compiler (or off Linux) this prints a
# warning and exits 0, and src/block/native-fs.ts falls back (no holes, zeroing by writes).
set -euo pipefail
cd "$(dirname "$0")/.."

warn() { echo "build-native.sh: WARNING: $*; sparse-file support (holes, trim, fast zero) is disabled" >&2; }

if [[ "$(uname -s)" != Linux ]]; then
  warn "native/fsx.c needs Linux (SEEK_DATA/SEEK_HOLE, fallocate), this is $(uname -s)"
  exit 0
fi
CC="${CC:-cc}"
if ! command -v "$CC" >/dev/null 2>&1; then
  warn "no C compiler ('$CC' not found; install gcc or set CC)"
  exit 0
fi
include_dir="$(node -p "require('node-api-headers').include_dir" 2>/dev/null || true)"
if [[ -z "$include_dir" || ! -f "$include_dir/node_api.h" ]]; then
  warn "the node-api-headers package is not installed (run npm install)"
  exit 0
fi

mkdir -p build
# Compile to a temporary name and rename: a running process that has the old addon mapped
# keeps its copy instead of seeing the file rewritten under it.
tmp="build/fsx.node.tmp.$$"
trap 'rm -f "$tmp"' EXIT
if ! "$CC" -O2 -shared -fPIC -std=c11 -Wall -Wextra -I"$include_dir" native/fsx.c -o "$tmp"; then
  warn "compiling native/fsx.c failed"
  exit 0
fi
mv -f "$tmp" build/fsx.node
echo "build-native.sh: built build/fsx.node" >&2
