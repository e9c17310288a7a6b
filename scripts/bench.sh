#!/usr/bin/env bash
# `npm run bench -- NAME [--json]`: NAME is dataplane or paper (bench/NAME.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-}"
case "$name" in
  dataplane|paper) shift ;;
  *) echo "usage: npm run bench -- dataplane|paper [--json]" >&2; exit 2 ;;
esac
bash scripts/install-deps.sh >&2
export PATH="$PWD/.tools/bin:$PATH"
exec npx tsx "bench/$name.ts" "$@"
