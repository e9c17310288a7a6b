#!/usr/bin/env bash
# Prints the path of a Temporal CLI (it runs `temporal server start-dev` for tests and demos).
# Order: $FERRY_TEMPORAL_BIN, `temporal` on PATH, .tools/bin/temporal; else builds it there with
# `go install`. Pinned to v1.5.1: later tags carry a replace directive that `go install` refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=v1.5.1
TOOLS="$PWD/.tools/bin"

if [ -n "${FERRY_TEMPORAL_BIN:-}" ]; then
  if [ -x "$FERRY_TEMPORAL_BIN" ]; then echo "$FERRY_TEMPORAL_BIN"; exit 0; fi
  echo "ensure-temporal: FERRY_TEMPORAL_BIN=$FERRY_TEMPORAL_BIN is not an executable file" >&2
  exit 1
fi
if command -v temporal >/dev/null 2>&1; then command -v temporal; exit 0; fi
if [ -x "$TOOLS/temporal" ]; then echo "$TOOLS/temporal"; exit 0; fi

GO=$(command -v go || true)
[ -z "$GO" ] && [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go
if [ -z "$GO" ]; then
  echo "ensure-temporal: no Temporal CLI found and no Go toolchain to build it;" >&2
  echo "  install Go (https://go.dev/dl) or put a 'temporal' binary on PATH or at $TOOLS/temporal" >&2
  exit 1
fi
mkdir -p "$TOOLS"
echo "ensure-temporal: building github.com/temporalio/cli/cmd/temporal@$VERSION into $TOOLS (a few minutes)" >&2
GOBIN="$TOOLS" "$GO" install "github.com/temporalio/cli/cmd/temporal@$VERSION" >&2
echo "$TOOLS/temporal"
