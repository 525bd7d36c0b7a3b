#!/usr/bin/env bash
# Runs every test: unit tests, spec test vectors, and the integration tests
# against a real Prosody started on loopback by the harness. Installs
# Prosody from Debian's packages when it is missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prosody >/dev/null 2>&1 || ! dpkg -s lua-unbound >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends prosody lua-unbound
fi
exec cargo test --workspace --release "$@"
