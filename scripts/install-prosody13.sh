#!/usr/bin/env bash
# Unpacks Prosody 13 from Debian 12's bookworm-backports suite into
# /opt/corvid/prosody13 (beside Debian 12's own Prosody 0.12, which the
# system keeps), for the tests that run mod_corvid on both releases.
# Nothing is installed system-wide: the backports source is added with its
# default low priority, and the package is only downloaded and unpacked.
# Needs root. Idempotent.
set -euo pipefail
ROOT=${CORVID_PROSODY13_ROOT:-/opt/corvid/prosody13}
if [ -x "$ROOT/usr/bin/prosody" ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
list=/etc/apt/sources.list.d/corvid-bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$list"
  apt-get update
fi
# Prosody 13's runtime dependencies that Debian 12 has (the Lua 5.4 libraries).
apt-get install -y --no-install-recommends lua5.4 lua-expat lua-filesystem lua-socket lua-sec lua-unbound lua-bitop >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get download prosody/bookworm-backports)
mkdir -p "$ROOT"
dpkg -x "$tmp"/prosody_*.deb "$ROOT"
# Point its launchers at the unpacked sources instead of /usr/lib/prosody.
sed -i "s#'/usr/lib/prosody#'$ROOT/usr/lib/prosody#g" "$ROOT/usr/bin/prosody" "$ROOT/usr/bin/prosodyctl"
echo "Prosody 13 unpacked into $ROOT"
