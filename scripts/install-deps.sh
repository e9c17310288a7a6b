#!/usr/bin/env bash
# Installs what Ferry's demo, tests and benchmarks need on a fresh Debian 12 machine, and nothing
# that is already there. Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(qemu-system-x86 qemu-utils libnbd-bin busybox-static iproute2 cpio kmod e2fsprogs openssl ca-certificates debootstrap openssh-server procps chromium libvirt-daemon-system libvirt-clients util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "ferry: installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Temporal CLI (the dev server): built from the Go module proxy into .tools/bin.
bash scripts/ensure-temporal.sh >/dev/null

# Node modules: a clean install when the lock file changed or nothing is installed yet.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
# npm's allow-scripts policy may skip native builds silently: check the native modules load.
node -e "require('better-sqlite3')(':memory:').close(); require('lzo').compress(Buffer.alloc(8))" \
  || { echo "ferry: native modules did not build; run 'npm rebuild better-sqlite3 lzo'" >&2; exit 1; }
npm run build --silent
