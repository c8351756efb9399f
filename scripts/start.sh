#!/usr/bin/env bash
# `npm start`: the demo server. `npm install` already built dist/ (the `prepare` script), so
# TypeScript is compiled again only when a source file is newer than the build (~19 s saved
# on every start); arguments after `npm start --` go to `cownbd demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
sources=()
for f in src tsconfig.json tsconfig.build.json package.json; do [[ -e $f ]] && sources+=("$f"); done
if [[ ! -f dist/cli/main.js ]] || [[ -n "$(find "${sources[@]}" -newer dist/cli/main.js -print -quit)" ]]; then
  npm run build >&2
fi
exec node dist/cli/main.js demo --exit-with-parent "$@"
