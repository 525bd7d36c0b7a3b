#!/usr/bin/env bash
# Corvid local federation demo.
#
# Starts three XMPP servers (Prosody from Debian's packages) federating over
# s2s on 127.0.0.2, 127.0.0.3 and 127.0.0.4, one corvidd beside each, and
# walks through what Corvid does, using the `corvid` CLI an operator uses.
# Everything lives in a temp dir and is stopped at the end, unless --keep is
# given: then the federation stays up to explore with `corvid`.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

if ! command -v prosody >/dev/null 2>&1 || ! dpkg -s lua-unbound >/dev/null 2>&1; then
  say "Installing Prosody from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends prosody lua-unbound
fi
say "Building corvidd and corvid (release)"
cargo build --release --quiet -p corvid-node -p corvid-cli
# A small XMPP client that plays a spammer and a user in step 8.
cargo build --release --quiet -p corvid-tests --bin corvid-demo-client
BIN="$PWD/target/release"
export PATH="$BIN:$PATH"

W=$(mktemp -d /tmp/corvid-demo.XXXXXX)
PIDS=()
cleanup() {
  if [ "$KEEP" = 1 ]; then return; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

cat > "$W/hosts" <<HOSTS
127.0.0.2 a.test pubsub.a.test corvid.a.test
127.0.0.3 b.test pubsub.b.test corvid.b.test
127.0.0.4 c.test pubsub.c.test corvid.c.test
127.0.0.5 spam.test
HOSTS
echo "nameserver 127.0.0.1" > "$W/resolv.conf"
# The federation's shared secret for IP tokens (members only).
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/federation.secret"
chmod 600 "$W/federation.secret"

declare -A IP=([a]=127.0.0.2 [b]=127.0.0.3 [c]=127.0.0.4)
declare -A API=([a]=127.0.0.1:17781 [b]=127.0.0.1:17782 [c]=127.0.0.1:17783)

say "Starting three XMPP servers: a.test, b.test, c.test (s2s on port 5269), each with mod_corvid"
for s in a b c; do
  d="$W/$s"; mkdir -p "$d/prosody"
  # corvidd's component secret, shared with Prosody's Component line.
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$d/component.secret"
  chmod 600 "$d/component.secret"
  cat > "$d/prosody.cfg.lua" <<CFG
run_as_root = true
data_path = "$d/prosody"
pidfile = "$d/prosody.pid"
log = { { levels = { min = "warn" }, to = "file", filename = "$d/prosody.log" } }
interfaces = { "${IP[$s]}" }
local_interfaces = { "${IP[$s]}" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
http_ports = {}
https_ports = {}
component_ports = { 5347 }
component_interfaces = { "${IP[$s]}" }
c2s_direct_tls_ports = {}
s2s_direct_tls_ports = {}
unbound = { resolvconf = "$W/resolv.conf"; hoststxt = "$W/hosts" }
network_settings = { nagle = false }
-- Plaintext only because everything here is on loopback.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = false
s2s_secure_auth = false
authentication = "internal_hashed"
modules_enabled = { "disco"; "roster"; "saslauth"; "dialback"; "limits"; "pep"; "ping"; "time"; "version";
  "offline"; "adhoc"; "corvid" }
limits = { c2s = { rate = "10kb/s" }; s2sin = { rate = "30kb/s" } }
-- mod_corvid (hooks/prosody/README.md): Prosody refuses what the federation
-- blocks and keeps what it flags in a spam folder.
plugin_paths = { "$PWD/hooks/prosody" }
corvid_api_url = "http://${API[$s]}"
corvid_api_token_file = "$d/read.token"
corvid_mode = "enforce"
-- What corvidd needs (the README lists these for operators):
unlimited_jids = { "corvidd@$s.test", "corvid.a.test", "corvid.b.test", "corvid.c.test" }
VirtualHost "$s.test"
Component "pubsub.$s.test" "pubsub"
    admins = { "corvidd@$s.test" }
-- corvidd's component: the block lists for mod_anti_spam and mod_muc_rtbl.
Component "corvid.$s.test"
    component_secret = "$(cat "$d/component.secret")"
    -- mod_limits here too, so that unlimited_jids applies to the peers' feeds
    modules_enabled = { "limits" }
CFG
  prosodyctl --config "$d/prosody.cfg.lua" register corvidd "$s.test" "demo-password-$s" >/dev/null
  prosodyctl --config "$d/prosody.cfg.lua" register carol "$s.test" "carol-password" >/dev/null
done
# A fourth server, spam.test, with open registration and no Corvid: the
# spammers' home in step 8.
d="$W/spam"; mkdir -p "$d/prosody"
cat > "$d/prosody.cfg.lua" <<CFG
run_as_root = true
data_path = "$d/prosody"
pidfile = "$d/prosody.pid"
log = { { levels = { min = "warn" }, to = "file", filename = "$d/prosody.log" } }
interfaces = { "127.0.0.5" }
local_interfaces = { "127.0.0.5" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
http_ports = {}
https_ports = {}
c2s_direct_tls_ports = {}
s2s_direct_tls_ports = {}
unbound = { resolvconf = "$W/resolv.conf"; hoststxt = "$W/hosts" }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = false
s2s_secure_auth = false
authentication = "internal_hashed"
modules_enabled = { "disco"; "roster"; "saslauth"; "dialback"; "ping" }
VirtualHost "spam.test"
CFG
for u in bot pusher; do
  prosodyctl --config "$d/prosody.cfg.lua" register "$u" spam.test spam-password >/dev/null
done
printf 'spam-password\n' > "$W/spam.password"
printf 'carol-password\n' > "$W/carol.password"
prosody -F --config "$d/prosody.cfg.lua" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1

say "Setting up three Corvid nodes with the operator's commands"
for s in a b c; do
  d="$W/$s"
  run corvid keygen --out "$d/signing.key"
  run corvid init --domain "$s.test" --out "$d/corvidd.toml" --secrets-dir "$d" --data-dir "$d/data" \
      --server "${IP[$s]}:5222" --listen "${API[$s]}" --tokens
  printf 'demo-password-%s\n' "$s" > "$d/xmpp-password"; chmod 600 "$d/xmpp-password"
  cp "$W/federation.secret" "$d/federation.secret"
  # Loopback demo: plaintext c2s, the shared IP secret, and a directory on a.test.
  sed -i 's/^tls = "starttls"/tls = "plaintext"/' "$d/corvidd.toml"
  sed -i "s/^server = \"127.0.0.1:5347\"/server = \"${IP[$s]}:5347\"/" "$d/corvidd.toml"
  cat >> "$d/corvidd.toml" <<EXTRA

[[keys.federation]]
id = "demo-federation"
secret_file = "$d/federation.secret"

[directory]
node = "xmpp:pubsub.a.test?;node=corvid-directory"
abuse = ["mailto:abuse@$s.test"]
listing_policy = "Listed after reports from two independent servers."
delisting_policy = "Write to abuse@$s.test; we answer within two days."
EXTRA
  run corvid check-config "$d/corvidd.toml"
done
# Prosody starts once corvidd's read token exists (mod_corvid reads it).
for s in a b c; do
  prosody -F --config "$W/$s/prosody.cfg.lua" >/dev/null 2>&1 &
  PIDS+=($!)
done
sleep 1
key() { grep '^# public-key:' "$W/$1/signing.key" | cut -d' ' -f3; }

# Each trusts the other two. b adds c from the directory later.
corvid -c "$W/a/corvidd.toml" peer add b.test --feed "xmpp:corvid.b.test?;node=corvid" --key "$(key b)" --yes 2>/dev/null
corvid -c "$W/a/corvidd.toml" peer add c.test --feed "xmpp:corvid.c.test?;node=corvid" --key "$(key c)" --yes 2>/dev/null
run corvid -c "$W/b/corvidd.toml" peer add a.test --feed "xmpp:corvid.a.test?;node=corvid" --key "$(key a)" --yes
corvid -c "$W/c/corvidd.toml" peer add a.test --feed "xmpp:corvid.a.test?;node=corvid" --key "$(key a)" --yes 2>/dev/null
corvid -c "$W/c/corvidd.toml" peer add b.test --feed "xmpp:corvid.b.test?;node=corvid" --key "$(key b)" --yes 2>/dev/null

for s in a b c; do
  corvidd --config "$W/$s/corvidd.toml" --ready-file "$W/$s/ready.json" >/dev/null 2>"$W/$s/corvidd.log" &
  PIDS+=($!)
done
for s in a b c; do
  for _ in $(seq 100); do [ -s "$W/$s/ready.json" ] && break; sleep 0.1; done
  [ -s "$W/$s/ready.json" ] || { echo "corvidd $s did not start:"; cat "$W/$s/corvidd.log"; exit 1; }
done
A=(corvid -c "$W/a/corvidd.toml"); B=(corvid -c "$W/b/corvidd.toml"); C=(corvid -c "$W/c/corvidd.toml")
wait_for() { # wait_for "description" command...: retries up to 20 s
  local what=$1; shift
  for _ in $(seq 200); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 0.1; done
  echo "timed out waiting for $what"; exit 1
}
action_is() { local node=$1 subject=$2 want=$3; corvid -c "$W/$node/corvidd.toml" --json verdict "$subject" | grep -q "\"action\": \"$want\""; }
wait_for "a.test online" sh -c "corvid -c '$W/a/corvidd.toml' status | grep -q 'xmpp:        online'"
wait_for "b.test online" sh -c "corvid -c '$W/b/corvidd.toml' status | grep -q 'xmpp:        online'"
for s in a b c; do
  wait_for "mod_corvid at $s.test to read the verdicts" sh -c "corvid -c '$W/$s/corvidd.toml' status | grep -q 'ok    enforcement.prosody:$s.test'"
done

say "The federation directory: every node announces a signed card; b.test adds c.test from it"
for s in a b c; do corvid -c "$W/$s/corvidd.toml" federation announce; done
run "${B[@]}" federation members
run "${B[@]}" peer add c.test --from-directory --yes
sleep 1

say "1. Server A reports a spammer. Its own report blocks at A at once"
run "${A[@]}" report bot@spam.example --category spam --confidence 90 --note "40 messages to strangers in a minute"
run "${A[@]}" verdict bot@spam.example

say "2. B trusts A: one peer's report gives 'flag' (a quorum of two is needed to block)"
wait_for "B to flag" action_is b bot@spam.example flag
run "${B[@]}" verdict bot@spam.example

say "3. B reports it too; C trusts A and B, so C follows with 'block' once the quorum is reached"
run "${B[@]}" report bot@spam.example --category spam --confidence 85
wait_for "C to block" action_is c bot@spam.example block
run "${C[@]}" verdict bot@spam.example

say "4. Why does C block? Every contributing report, its weight, age and decay"
run "${C[@]}" why bot@spam.example

say "5. A retraction at A clears B"
run "${A[@]}" report oops@partner.example --category spam --confidence 90
wait_for "B to flag" action_is b oops@partner.example flag
run "${B[@]}" verdict oops@partner.example
run "${A[@]}" retract oops@partner.example --reason false-positive
wait_for "B to clear" action_is b oops@partner.example allow
run "${B[@]}" verdict oops@partner.example

say "6. B imports the JabberSPAM-style blacklist as a local source"
printf '# demo blacklist\nspam-relay.example\nopen-registration.example\nnot a domain!\n' > "$W/blacklist.txt"
run "${B[@]}" import "$W/blacklist.txt" --format blacklist
run "${B[@]}" verdict spam-relay.example

say "7. A and C report an abusive server whose admins ignore abuse mail; B exports the shame list"
run "${A[@]}" report abusive-server.example --category open-relay --confidence 90 --abuse-contacted now --count 12
run "${C[@]}" report abusive-server.example --category open-relay --confidence 90 --count 7
wait_for "B to block the domain" action_is b abusive-server.example block
run "${B[@]}" export --format blacklist
run "${B[@]}" export --format html --out "$W/shame-list.html"
grep -o '<tr><td>abusive-server.example</td>.*</tr>' "$W/shame-list.html"

say "8. Prosody acts on the verdicts: mod_corvid at C refuses a blocked stranger"
DEMO=(corvid-demo-client)
run "${A[@]}" report bot@spam.test --category spam --confidence 90 --note "the same link to 40 strangers"
run "${B[@]}" report bot@spam.test --category spam --confidence 90
wait_for "C to block bot@spam.test" action_is c bot@spam.test block
run "${C[@]}" verdict bot@spam.test
sleep 1 # one stream round trip to mod_corvid's copy
run "${DEMO[@]}" 127.0.0.5:5222 bot@spam.test "$W/spam.password" send carol@c.test "cheap pills at spam.test"

say "9. A flagged stranger's message waits in carol's spam folder; she releases it"
run "${A[@]}" report pusher@spam.test --category spam --confidence 60 --note "one complaint so far"
wait_for "C to flag pusher@spam.test" action_is c pusher@spam.test flag
run "${C[@]}" verdict pusher@spam.test
sleep 1
run "${DEMO[@]}" 127.0.0.5:5222 pusher@spam.test "$W/spam.password" send carol@c.test "hi carol, are we still meeting?"
run "${DEMO[@]}" 127.0.0.4:5222 carol@c.test "$W/carol.password" folder
run "${DEMO[@]}" 127.0.0.4:5222 carol@c.test "$W/carol.password" release
printf 'What mod_corvid at c.test counted (corvid status):\n'
"${C[@]}" status | grep -E 'enforcement|refused|prosody' || true

say "Status of B"
run "${B[@]}" status

if [ "$KEEP" = 1 ]; then
  say "The federation stays up. Try:"
  echo "  export PATH=$BIN:\$PATH"
  echo "  corvid -c $W/b/corvidd.toml why bot@spam.example"
  echo "  corvid -c $W/c/corvidd.toml peer list"
  echo "Stop it with: kill ${PIDS[*]}"
else
  say "Done. Everything is stopped and removed."
fi
