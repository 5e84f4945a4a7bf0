#!/usr/bin/env bash
# Release build for a board: boards/cross-build.sh rpi5  ->  target/<triple>/release/sonomask
set -euo pipefail
cd "$(dirname "$0")/.."
BOARD=${1:?usage: cross-build.sh BOARD}
TOML=boards/$BOARD.toml
[ -f "$TOML" ] || { echo "no $TOML" >&2; exit 1; }
TARGET=$(sed -n 's/^target = "\(.*\)"/\1/p' "$TOML")
CPU=$(sed -n 's/^target_cpu = "\(.*\)"/\1/p' "$TOML")
if [ "$TARGET" != "x86_64-unknown-linux-gnu" ]; then
  command -v aarch64-linux-gnu-gcc >/dev/null || { echo "install gcc-aarch64-linux-gnu libc6-dev-arm64-cross (boards/test-aarch64.sh does)" >&2; exit 1; }
  rustup target list --installed | grep -q "$TARGET" || rustup target add "$TARGET"
fi
RUSTFLAGS="-C target-cpu=$CPU" cargo build --release --target "$TARGET"
ls -l "target/$TARGET/release/sonomask"
