-- mod_corvid: Prosody acts on the Corvid federation's verdicts.
--
-- A copy of corvidd's `flag` and `block` decisions and local list entries
-- for JIDs and domains is kept in memory, fed from corvidd's loopback HTTP
-- API as a snapshot (GET /v1/mirror, in pages) and then a long-polled
-- change stream (GET /v1/decisions/stream). Stanzas are checked against
-- that copy only: no stanza ever waits on the network.
--
-- Checked: messages (to the bare and to a full JID) and subscription
-- requests from strangers, that is remote senders who are not in the
-- recipient's roster and whom the recipient has not written to. `block`
-- bounces them with policy-violation before offline storage, MAM, carbons
-- or push see them; `flag` is counted and delivered.
--
-- Works on Prosody 13 and 0.12. Options (global or per VirtualHost) are
-- documented in README.md beside this file.

local st = require "util.stanza";
local jid_util = require "util.jid";
local json = require "util.json";
local http = require "net.http";
local cache = require "util.cache";
local rostermanager = require "core.rostermanager";

local keys = module:require "corvid_keys";

-- One copy of the verdicts and one sync for the whole server; the hooks
-- are added on each host that loads the module (module.add_host below).
module:set_global();

local jid_split, jid_bare = jid_util.split, jid_util.bare;

local api_url = module:get_option_string("corvid_api_url", "http://127.0.0.1:7780"):gsub("/+$", "");
local stale_after = module:get_option_number("corvid_stale_after", 120);
local page_size = module:get_option_number("corvid_snapshot_page", 5000);

local function read_token()
	local inline = module:get_option_string("corvid_api_token", nil);
	if inline then return inline; end
	local path = module:get_option_string("corvid_api_token_file", "/etc/corvid/read.token");
	local f, err = io.open(path);
	if not f then
		module:log("error", "cannot read corvid_api_token_file %s: %s (set corvid_api_token_file to corvidd's read token, readable by prosody)", path, err);
		return nil;
	end
	local token = f:read("*l");
	f:close();
	return token and token:match("^%s*(.-)%s*$");
end
local token = read_token();

-- Actions and what decided them, as corvidd records them.
local ALLOW, FLAG, BLOCK = 0, 1, 2;
local FEDERATION, LOCAL_ALLOW, LOCAL_DENY = 0, 1, 2;
local action_code = { allow = ALLOW, flag = FLAG, block = BLOCK };
local origin_code = { federation = FEDERATION, ["local-allow"] = LOCAL_ALLOW, ["local-deny"] = LOCAL_DENY };
local action_name = { [ALLOW] = "allow", [FLAG] = "flag", [BLOCK] = "block" };

-- The copy: JID keys by their binary SHA-256, domain keys by their text
-- without `domain:`; each value is action * 4 + origin. Shared by every
-- host that loads the module.
local mirror = { jids = {}, domains = {}, entries = 0, loaded = false, fresh_at = 0 };

local m_checked = module:metric("counter", "checked", "", "Stanzas from strangers checked against Corvid's verdicts.", { "host", "kind", "action" });
local m_refused = module:metric("counter", "refused", "", "Stanzas refused because Corvid blocks their sender.", { "host", "kind" });
local m_would = module:metric("counter", "would_refuse", "", "Stanzas observe mode let through that enforcement would have refused.", { "host", "kind" });
local m_fail_open = module:metric("counter", "fail_open", "", "Checks made without a current copy of the verdicts (corvidd unreachable), let through.", { "host" });
local m_fail_closed = module:metric("counter", "fail_closed", "", "Stanzas refused because no current copy of the verdicts was held (corvid_fail = \"closed\").", { "host" });
local m_entries = module:metric("gauge", "mirror_entries", "", "Subjects in the copy of Corvid's verdicts.", {});
local m_age = module:metric("gauge", "mirror_age", "seconds", "Seconds since the copy of the verdicts was last confirmed current by corvidd.", {});

local function decode_key(subject)
	local kind, rest = subject:match("^(%a+):(.*)$");
	if kind == "jid" and #rest == 64 then
		local bin = rest:gsub("%x%x", function (h) return string.char(tonumber(h, 16)); end);
		return mirror.jids, bin;
	elseif kind == "domain" then
		return mirror.domains, rest;
	end
	return nil;
end

-- Applies one entry to `jids`/`domains` (the live copy or a snapshot being
-- built); returns the change in the number of entries.
local function apply(jids, domains, subject, action, origin)
	local a, o = action_code[action], origin_code[origin];
	if not a or not o then return 0; end
	local tbl, key = decode_key(subject);
	if not tbl then return 0; end
	tbl = (tbl == mirror.jids) and jids or domains;
	local before = tbl[key] ~= nil;
	if a == ALLOW and o == FEDERATION then
		tbl[key] = nil;
		return before and -1 or 0;
	end
	tbl[key] = a * 4 + o;
	return before and 0 or 1;
end

-- Sync with corvidd ---------------------------------------------------------

local generation = 0; -- a newer sync loop makes the older one stop
local last_progress = 0;
local backoff = 1;

local function get(path, callback)
	return http.request(api_url .. path, {
		headers = { Authorization = "Bearer " .. (token or ""), Accept = "application/json" };
	}, function (body, code)
		local data;
		if code == 200 then
			data = json.decode(body);
		end
		callback(data, code, body);
	end);
end

local snapshot, stream;

local function retry(gen, what, code, body)
	if gen ~= generation then return; end
	module:log("warn", "corvidd %s failed (%s %s); copy of the verdicts kept, retrying in %ds",
		what, tostring(code), tostring(body and body:sub(1, 200) or ""), backoff);
	local wait = backoff;
	backoff = math.min(backoff * 2, 30);
	module:add_timer(wait, function ()
		if gen ~= generation then return; end
		if what == "stream" and mirror.loaded then
			stream(gen, mirror.cursor);
		else
			snapshot(gen, nil, {}, {}, 0, nil);
		end
	end);
end

function snapshot(gen, after, jids, domains, count, cursor)
	local path = "/v1/mirror?limit=" .. page_size;
	if after then path = path .. "&after=" .. http.urlencode(after); end
	get(path, function (data, code, body)
		if gen ~= generation then return; end
		if not data then return retry(gen, "snapshot", code, body); end
		last_progress = os.time();
		cursor = cursor or data.cursor;
		for _, e in ipairs(data.entries or {}) do
			count = count + apply(jids, domains, e.subject, e.action, e.origin);
		end
		if data.after and data.after ~= json.null then
			-- The next page after this one has let the event loop run.
			return snapshot(gen, data.after, jids, domains, count, cursor);
		end
		mirror.jids, mirror.domains, mirror.entries = jids, domains, count;
		mirror.cursor = cursor;
		mirror.loaded = true;
		mirror.fresh_at = os.time();
		backoff = 1;
		m_entries:with_labels():set(count);
		module:log("info", "copy of Corvid's verdicts loaded: %d subjects, cursor %d", count, cursor or 0);
		stream(gen, cursor);
	end);
end

function stream(gen, since)
	get("/v1/decisions/stream?wait=25&limit=5000&since=" .. tostring(since), function (data, code, body)
		if gen ~= generation then return; end
		if not data then return retry(gen, "stream", code, body); end
		last_progress = os.time();
		mirror.fresh_at = os.time();
		backoff = 1;
		if data.reset then
			module:log("info", "corvidd's decision stream moved past our cursor %d: reading a new snapshot", since);
			return snapshot(gen, nil, {}, {}, 0, nil);
		end
		local count = mirror.entries;
		for _, d in ipairs(data.decisions or {}) do
			count = count + apply(mirror.jids, mirror.domains, d.subject, d.action, d.origin);
		end
		mirror.entries = count;
		mirror.cursor = data.next or since;
		m_entries:with_labels():set(count);
		stream(gen, mirror.cursor);
	end);
end

local function restart(reason)
	generation = generation + 1;
	last_progress = os.time();
	if reason then
		module:log("warn", "restarting the sync with corvidd: %s", reason);
	end
	if mirror.loaded then
		stream(generation, mirror.cursor);
	else
		snapshot(generation, nil, {}, {}, 0, nil);
	end
end

-- A stopped corvidd leaves a request hanging: a watchdog starts over.
module:add_timer(5, function ()
	m_age:with_labels():set(os.time() - (mirror.fresh_at or 0));
	if os.time() - last_progress > 40 then
		restart("no answer from corvidd for 40 s");
	end
	return 5;
end);

restart();

-- Verdicts ------------------------------------------------------------------

--- The action for a bare JID from the copy: spec §15.4's precedence of
-- local lists, then the most severe action among the exact and covering
-- subjects (§15.5).
local function verdict_for(bare)
	local node, host = jid_split(bare);
	if not host then return ALLOW; end
	local domain = keys.normalize_domain(host);
	if not domain then return ALLOW; end
	local domain_keys = keys.domain_keys(domain);
	local exact, covering = nil, {};
	if node then
		exact = mirror.jids[keys.jid_digest(node, host)];
	else
		-- A server's own address: its domain is the exact subject.
		exact = mirror.domains[domain];
	end
	for i, k in ipairs(domain_keys) do
		local v = mirror.domains[k];
		if v and (node or i > 1) then covering[#covering + 1] = v; end
	end
	if exact then
		local o = exact % 4;
		if o == LOCAL_ALLOW then return ALLOW; end
		if o == LOCAL_DENY then return BLOCK; end
	end
	for _, v in ipairs(covering) do
		if v % 4 == LOCAL_ALLOW then return ALLOW; end
	end
	for _, v in ipairs(covering) do
		if v % 4 == LOCAL_DENY then return BLOCK; end
	end
	local worst = exact and exact // 4 or ALLOW;
	for _, v in ipairs(covering) do
		worst = math.max(worst, v // 4);
	end
	return worst;
end

local function current()
	return mirror.loaded and os.time() - mirror.fresh_at <= stale_after;
end

--- Adds the checks to one host, with that host's options.
function module.add_host(module)
	local host_name = module.host;
	local mode = module:get_option_string("corvid_mode", "observe");
	local fail_mode = module:get_option_string("corvid_fail", "open");
	local policy_url = module:get_option_string("corvid_policy_url", nil);
	local exempt_domains = module:get_option_set("corvid_exempt_domains", {});
	if mode ~= "enforce" and mode ~= "observe" then
		module:log("error", "corvid_mode must be \"enforce\" or \"observe\", not %q: observing", mode);
		mode = "observe";
	end
	if fail_mode ~= "open" and fail_mode ~= "closed" then
		module:log("error", "corvid_fail must be \"open\" or \"closed\", not %q: failing open", fail_mode);
		fail_mode = "open";
	end
	local fail_logged = 0;

	-- Who the user wrote to recently (not strangers), per local user.
	local wrote_to = cache.new(module:get_option_number("corvid_recent_users", 10000));

	local function note_outgoing(event)
		local origin, stanza = event.origin, event.stanza;
		if origin.type ~= "c2s" or not stanza.attr.to then return; end
		local user = jid_bare(stanza.attr.from or (origin.username .. "@" .. origin.host));
		local set = wrote_to:get(user);
		if not set then
			set = cache.new(1000);
			wrote_to:set(user, set);
		end
		set:set(jid_bare(stanza.attr.to), true);
	end
	module:hook("pre-message/bare", note_outgoing, 1000);
	module:hook("pre-message/full", note_outgoing, 1000);
	module:hook("pre-message/host", note_outgoing, 1000);
	module:hook("pre-presence/bare", note_outgoing, 1000);

	local function is_stranger(user, host, sender_bare)
		local set = wrote_to:get(user .. "@" .. host);
		if set and set:get(sender_bare) then return false; end
		local roster = rostermanager.load_roster(user, host);
		if roster and roster[sender_bare] then return false; end
		return true;
	end

	local function refuse(event, kind, why)
		local stanza = event.stanza;
		local text = "Refused by this server's spam policy (Corvid: " .. why .. ")";
		if policy_url then text = text .. ". See " .. policy_url; end
		if stanza.attr.type ~= "error" then
			module:send(st.error_reply(stanza, "cancel", "policy-violation", text));
		end
		m_refused:with_labels(host_name, kind):add(1);
		return true;
	end

	--- Checks one stanza from a remote sender to a local user; returns true
	-- when it was refused (and the event must stop).
	local function check(event, kind)
		local stanza = event.stanza;
		local from = stanza.attr.from;
		if not from then return; end
		local sender = jid_bare(from);
		local _, sender_host = jid_split(sender);
		if not sender_host or prosody.hosts[sender_host] or exempt_domains:contains(sender_host) then
			return; -- local users, this server's components, exempt domains
		end
		local user, host = jid_split(stanza.attr.to);
		if not user or not is_stranger(user, host, sender) then
			return;
		end
		if not current() then
			if fail_mode == "closed" and mode == "enforce" then
				m_fail_closed:with_labels(host_name):add(1);
				return refuse(event, kind, "verdicts unavailable");
			end
			m_fail_open:with_labels(host_name):add(1);
			if os.time() - fail_logged > 60 then
				fail_logged = os.time();
				module:log("warn", "no current copy of Corvid's verdicts (corvidd unreachable?): stanzas from strangers pass unchecked (counted as fail_open)");
			end
			if not mirror.loaded then return; end
		end
		local action = verdict_for(sender);
		m_checked:with_labels(host_name, kind, action_name[action]):add(1);
		if action == BLOCK then
			if mode == "enforce" then
				module:log("debug", "refused %s from %s to %s (Corvid: block)", kind, sender, stanza.attr.to);
				return refuse(event, kind, "block");
			end
			m_would:with_labels(host_name, kind):add(1);
		end
	end

	local function on_message(event)
		local stanza = event.stanza;
		local t = stanza.attr.type;
		if t == "groupchat" or t == "error" then return; end
		-- A private message through a chat room is the room's business.
		if stanza:get_child("x", "http://jabber.org/protocol/muc#user") then return; end
		return check(event, "message");
	end

	local function on_presence(event)
		if event.stanza.attr.type ~= "subscribe" then return; end
		return check(event, "subscription");
	end

	-- Above mod_mam (0), mod_carbons (-0.5), mod_message and mod_offline, so
	-- nothing refused is archived, copied, stored or pushed.
	module:hook("message/bare", on_message, 500);
	module:hook("message/full", on_message, 500);
	module:hook("presence/bare", on_presence, 500);

	module:log("info", "Corvid verdicts from %s, mode %s, failing %s", api_url, mode, fail_mode);
end
