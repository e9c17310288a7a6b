#!/usr/bin/env bash
# The README's first quick-start command: a live migration of a working guest in a local lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >&2
export PATH="$PWD/.tools/bin:$PATH"
exec node dist/labs/demo.js "$@"
