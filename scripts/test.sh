#!/usr/bin/env bash
# Runs every test: unit tests, spec test vectors, and the integration tests
# against real Prosody servers started on loopback by the harness: Debian
# 12's Prosody 0.12, and Prosody 13 from bookworm-backports unpacked into
# /opt/corvid/prosody13 (mod_corvid is tested on both), and ejabberd 24.12
# from bookworm-backports (its mod_muc_rtbl reads corvidd's block lists; the
# system service stays off). Installs what is missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prosody >/dev/null 2>&1 || ! dpkg -s lua-unbound >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends prosody lua-unbound
fi
./scripts/install-prosody13.sh
./scripts/install-ejabberd.sh
exec cargo test --workspace --release "$@"
