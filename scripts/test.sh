#!/usr/bin/env bash
# `npm test`: install the Debian packages the tests need (when missing and when root),
# build, then run the whole vitest suite. Under CI=true a missing tool is a failure
# (tests check this themselves via test/helpers/tools.ts).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(qemu-utils gcc libc6-dev qemu-block-extra libnbd-bin python3-libnbd nbdkit fio nbd-client time gnutls-bin chromium
          uml-utilities user-mode-linux patchelf e2fsprogs qemu-system-x86 busybox-static systemd strace jq debootstrap)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test.sh: WARNING: missing packages ${missing[*]} (not root: tests needing them will skip locally)" >&2
  fi
fi

# ESLint (eslint.config.js: type-checked rules, file and function size caps) and the layer
# rules and import cycles (.dependency-cruiser.cjs): fails fast, before the build.
npm run --silent lint
bash scripts/build-native.sh
# A linux.uml that boots on this CPU (see the script for why Debian 12's may not).
uml_dir=$(bash scripts/uml-kernel.sh)
if [[ -n "$uml_dir" ]]; then export PATH="$uml_dir:$PATH"; fi
npm run build
# Today's NBD clients for test/modern/ (docs/modern-clients.md): a Debian trixie root,
# built once (about a minute) and cached outside the repository. A failed build is
# reported here; the modern tests then fail under CI=true and skip locally.
if [[ $(id -u) -eq 0 ]]; then
  bash scripts/modern-root.sh >/dev/null || echo "test.sh: WARNING: scripts/modern-root.sh failed: test/modern cannot run" >&2
else
  bash scripts/modern-root.sh >/dev/null 2>&1 || echo "test.sh: WARNING: no modern root (build it as root: scripts/modern-root.sh): test/modern will skip" >&2
fi
# Default reporter for people, JSON for the closing summary line CI reads.
results=$(mktemp -t cownbd-vitest-XXXXXX.json)
trap 'rm -f "$results"' EXIT
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$results" "$@" || status=$?
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = (r.numPendingTests || 0) + (r.numTodoTests || 0);
  console.log(`Tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' "$results" || echo "Tests: summary unavailable (vitest wrote no JSON report)"
exit "$status"
