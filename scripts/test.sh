#!/usr/bin/env bash
# The test command of the README and of CI: installs what is missing, then runs every test against
# real parts (Temporal dev server, QEMU guests in network namespaces, real Xen under QEMU, SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$PWD/.tools/bin:$PATH"
mkdir -p .cache
# The whole suite: build the lab images first (cached in .cache/; the first time this runs
# debootstrap for the Xen dom0), so no test's setup timeout is spent downloading Debian.
if [ "$#" -eq 0 ]; then
  node dist/labs/xen/build-images.js
fi
rc=0
npx vitest run --reporter=verbose --reporter=json --outputFile.json=.cache/vitest-results.json "$@" || rc=$?
# One plain closing line that any reader can count: "tests: N passed, N failed".
node -e '
  const r = JSON.parse(require("fs").readFileSync(".cache/vitest-results.json", "utf8"));
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (r.numPendingTests ? `, ${r.numPendingTests} skipped` : ""));
' || true
exit "$rc"
