#!/usr/bin/env bash
# Cross-builds sonomask for aarch64-unknown-linux-gnu and runs its library tests under qemu-user
# (NEON kernels, tract's ARM int8/f32 kernels, the wire codec, the DICOM reader...). Installs
# what it needs on Debian when run as root (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
# qemu-user; the rustup target). .cargo/config.toml holds the linker and runner.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
  else
    echo "needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (apt-get install as root)" >&2
    exit 1
  fi
fi
rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
# qemu shows the host's /proc/cpuinfo; tract picks its ARM kernels from this instead.
export TRACT_CPU_AARCH64_KIND=${TRACT_CPU_AARCH64_KIND:-cortexa55}
cargo test --target aarch64-unknown-linux-gnu --lib "$@"
