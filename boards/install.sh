#!/usr/bin/env bash
# Installs sonomask as a service on a board (run on the board as root, from an unpacked release
# directory holding bin/sonomask, models/ and boards/):
#   sudo boards/install.sh rpi5
set -euo pipefail
BOARD=${1:?usage: install.sh BOARD (one of: $(cd "$(dirname "$0")" && ls *.toml | sed 's/.toml//' | tr '\n' ' '))}
HERE=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$HERE/boards/$BOARD.toml" ] || { echo "no board profile boards/$BOARD.toml" >&2; exit 1; }
[ -x "$HERE/bin/sonomask" ] || { echo "no bin/sonomask next to boards/ (cross-build it: boards/cross-build.sh)" >&2; exit 1; }
id sonomask >/dev/null 2>&1 || useradd --system --no-create-home --groups dialout sonomask
install -d /opt/sonomask/bin /opt/sonomask/boards /var/lib/sonomask
install -m 0755 "$HERE/bin/sonomask" /opt/sonomask/bin/sonomask
install -m 0644 "$HERE"/boards/*.toml /opt/sonomask/boards/
[ -d "$HERE/models" ] && cp -r "$HERE/models" /opt/sonomask/
chown -R sonomask /var/lib/sonomask
echo "SONOMASK_BOARD=$BOARD" > /etc/default/sonomask
install -m 0644 "$HERE/boards/99-sonomask.rules" /etc/udev/rules.d/99-sonomask.rules
udevadm control --reload || true
install -m 0644 "$HERE/boards/sonomask.service" /etc/systemd/system/sonomask.service
systemctl daemon-reload
/opt/sonomask/bin/sonomask doctor --models /opt/sonomask/models || true
systemctl enable --now sonomask
echo "sonomask installed for $BOARD: journalctl -u sonomask -f"
