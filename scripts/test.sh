#!/usr/bin/env bash
# The test command of the README and of CI: installs what is missing, then runs every test against
# real parts (Temporal dev server, QEMU guests in network namespaces, SQLite files).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$PWD/.tools/bin:$PATH"
exec npx vitest run "$@"
