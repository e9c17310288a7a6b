#!/usr/bin/env bash
# Builds the Xen lab (dom0 tree by debootstrap, Xen, ext4 image, PVH guest) into .cache/xen.
# Needs root (debootstrap, mkfs.ext4 -d of a root-owned tree). Reused when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v debootstrap >/dev/null; then
  apt-get install -y debootstrap
fi
exec node --import tsx src/labs/xen/build-images.ts
