#!/usr/bin/env bash
# Installs ejabberd 24.12 from Debian 12's bookworm-backports suite
# system-wide (package `ejabberd`, with its Erlang/OTP 25 dependencies from
# bookworm and its erlang-p1-* libraries from bookworm-backports), for the
# tests where an unmodified ejabberd mod_muc_rtbl reads corvidd's
# muc_bans_sha256 node. The tests run their own private ejabberd instance
# from a temp dir (see tests/EJABBERD-NOTES.md); the system service is never
# started, and it and epmd's systemd units are left disabled.
# The backports source is added (as in install-prosody13.sh) with its
# default low priority; only the ejabberd dependency chain is taken from it.
# Needs root. Idempotent.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "install-ejabberd.sh: needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
VERSION_PREFIX=24.12-
ebin_glob='/usr/lib/x86_64-linux-gnu/ejabberd-24.12*/ebin/mod_muc_rtbl.beam'

installed() {
  local v
  v=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' ejabberd 2>/dev/null || true)
  [[ $v == "ii "*"$VERSION_PREFIX"* ]] && compgen -G "$ebin_glob" >/dev/null
}

if ! installed; then
  list=/etc/apt/sources.list.d/corvid-bookworm-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$list"
    apt-get update
  elif ! apt-cache show ejabberd/bookworm-backports >/dev/null 2>&1; then
    apt-get update
  fi
  # Keep the service (and epmd) from being started by the maintainer
  # scripts: a policy-rc.d that denies every action, for the duration of the
  # install only. A policy-rc.d already present is put back afterwards.
  policy=/usr/sbin/policy-rc.d
  saved=
  if [ -e "$policy" ]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
  fi
  restore_policy() {
    if [ -n "$saved" ]; then
      cp -p "$saved" "$policy"
      rm -f "$saved"
    else
      rm -f "$policy"
    fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  # No admin account from debconf: the postinst would wait for a running server.
  echo 'ejabberd ejabberd/user string' | debconf-set-selections
  echo 'ejabberd ejabberd/password password' | debconf-set-selections
  apt-get install -y --no-install-recommends -t bookworm-backports ejabberd
  restore_policy
  trap - EXIT
fi

# Never start at boot: neither ejabberd's unit and init script nor epmd's
# socket unit (ListenStream=4369 on all interfaces).
# (deb-systemd-helper refuses to run outside dpkg; systemctl edits the
# symlinks even when systemd is not PID 1, and syncs the SysV script.)
for unit in ejabberd.service epmd.service epmd.socket; do
  if [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" != disabled ]; then
    systemctl disable "$unit" >/dev/null 2>&1 || true
  fi
done
if [ -x /etc/init.d/ejabberd ] && compgen -G '/etc/rc[2-5].d/S*ejabberd' >/dev/null; then
  update-rc.d ejabberd disable >/dev/null 2>&1 || true
fi

# Nothing from this install may be listening beyond loopback.
bad=$(ss -Hltnp 2>/dev/null | awk '$4 !~ /^(127\.|\[::1\]|\[::ffff:127\.)/' \
  | grep -E '"(beam\.smp|beam|epmd|erl_child_setup)"' || true)
if [ -n "$bad" ]; then
  echo "install-ejabberd.sh: an Erlang process listens beyond loopback:" >&2
  echo "$bad" >&2
  exit 1
fi

if ! installed; then
  echo "install-ejabberd.sh: ejabberd 24.12 is not installed after apt-get" >&2
  exit 1
fi
beam=$(compgen -G "$ebin_glob" | head -n1)
echo "ejabberd $(dpkg-query -W -f='${Version}' ejabberd): $beam"
