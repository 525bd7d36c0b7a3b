#!/usr/bin/env bash
# Unpacks Prosody 13 from Debian 12's bookworm-backports suite into
# /opt/corvid/prosody13 (beside Debian 12's own Prosody 0.12, which the
# system keeps), for the tests that run mod_corvid on both releases, and
# the community modules (prosody-modules) of each release into
# /opt/corvid/prosody-modules/{debian12,backports13}, for the tests where
# unmodified mod_anti_spam and mod_muc_rtbl read corvidd's block lists.
# Nothing is installed system-wide: the backports source is added with its
# default low priority, and the packages are only downloaded and unpacked.
# Needs root. Idempotent.
set -euo pipefail
ROOT=${CORVID_PROSODY13_ROOT:-/opt/corvid/prosody13}
MODULES=${CORVID_PROSODY_MODULES_ROOT:-/opt/corvid/prosody-modules}
if [ -x "$ROOT/usr/bin/prosody" ] \
  && [ -f "$MODULES/debian12/usr/lib/prosody/modules/mod_muc_rtbl/mod_muc_rtbl.lua" ] \
  && [ -f "$MODULES/backports13/usr/lib/prosody/modules/mod_anti_spam/mod_anti_spam.lua" ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
list=/etc/apt/sources.list.d/corvid-bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$list"
  apt-get update
elif ! apt-cache show prosody-modules/bookworm-backports >/dev/null 2>&1; then
  apt-get update
fi
# Prosody 13's runtime dependencies that Debian 12 has (the Lua 5.4 libraries).
apt-get install -y --no-install-recommends lua5.4 lua-expat lua-filesystem lua-socket lua-sec lua-unbound lua-bitop >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
if [ ! -x "$ROOT/usr/bin/prosody" ]; then
  (cd "$tmp" && apt-get download prosody/bookworm-backports)
  mkdir -p "$ROOT"
  dpkg -x "$tmp"/prosody_*.deb "$ROOT"
  # Point its launchers at the unpacked sources instead of /usr/lib/prosody.
  sed -i "s#'/usr/lib/prosody#'$ROOT/usr/lib/prosody#g" "$ROOT/usr/bin/prosody" "$ROOT/usr/bin/prosodyctl"
  echo "Prosody 13 unpacked into $ROOT"
fi
# Debian 12's prosody-modules (for 0.12) and bookworm-backports' (for 13).
for pair in "debian12:prosody-modules/bookworm" "backports13:prosody-modules/bookworm-backports"; do
  name=${pair%%:*}
  pkg=${pair#*:}
  if [ ! -d "$MODULES/$name/usr/lib/prosody/modules" ]; then
    rm -f "$tmp"/prosody-modules_*.deb
    (cd "$tmp" && apt-get download "$pkg")
    mkdir -p "$MODULES/$name"
    dpkg -x "$tmp"/prosody-modules_*.deb "$MODULES/$name"
    echo "prosody-modules ($pkg) unpacked into $MODULES/$name"
  fi
done
