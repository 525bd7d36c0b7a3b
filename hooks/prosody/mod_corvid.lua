-- mod_corvid: Prosody acts on the Corvid federation's verdicts.
--
-- A copy of corvidd's `flag` and `block` decisions and local list entries
-- for JIDs, domains and content digests is kept in memory, fed from
-- corvidd's loopback HTTP API as a snapshot (GET /v1/mirror, in pages) and
-- then a long-polled change stream (GET /v1/decisions/stream). Stanzas
-- are checked against that copy only, and content digests are computed
-- here (corvid_digest.lib.lua): a stanza waits on the network only for a
-- body the digest tables do not cover (see README.md), never longer than
-- corvid_digest_timeout.
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
local datetime = require "util.datetime";
local hashes = require "util.hashes";
local dataforms = require "util.dataforms";

local keys = module:require "corvid_keys";
local digest_lib = module:require "corvid_digest";

-- One copy of the verdicts and one sync for the whole server; the hooks
-- are added on each host that loads the module (module.add_host below).
module:set_global();

local jid_split, jid_bare = jid_util.split, jid_util.bare;

local api_url = module:get_option_string("corvid_api_url", "http://127.0.0.1:7780"):gsub("/+$", "");
local stale_after = module:get_option_number("corvid_stale_after", 120);
-- The API token, message bodies and (later) raw client IPs go to corvidd:
-- only ever over loopback.
local api_host = api_url:match("^https?://%[([^%]]+)%]") or api_url:match("^https?://([^/:]+)");
local api_loopback = api_host == "localhost" or api_host == "::1"
	or (api_host ~= nil and api_host:match("^127%.%d+%.%d+%.%d+$") ~= nil);
if not api_loopback then
	module:log("error", "corvid_api_url %s is not a loopback address: it is not used, and stanzas from strangers pass unchecked (counted as fail_open) until it is (set it to corvidd's [api] listen, e.g. http://127.0.0.1:7780)", api_url);
end
local page_size = module:get_option_number("corvid_snapshot_page", 500);

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
local mirror = { jids = {}, domains = {}, entries = 0, loaded = false, fresh_at = 0, peers = {}, s2s_rechecks = {}, brake = false };

-- What the module tells corvidd about itself with each request, for
-- `corvid status`: hosts, modes and counters.
local about = { hosts = {}, fail_open = 0, refused = 0, would = 0 };
local function describe()
	local hosts, modes = {}, {};
	for host, m in pairs(about.hosts) do
		hosts[#hosts + 1] = host;
		modes[#modes + 1] = host .. "=" .. m;
	end
	table.sort(hosts);
	table.sort(modes);
	return ("prosody:%s; software=Prosody %s; hosts=%s; mode=%s; fail_open=%d; refused=%d; would_refuse=%d; entries=%d")
		:format(hosts[1] or "?", tostring(prosody.version), table.concat(hosts, ","), table.concat(modes, ","),
			about.fail_open, about.refused, about.would, mirror.entries or 0);
end

local function set_brake(on)
	on = on == true;
	if on ~= mirror.brake then
		mirror.brake = on;
		module:log(on and "warn" or "info", on
			and "corvidd's emergency brake is on: observing, nothing is refused"
			or "corvidd's emergency brake is released: enforcing where configured");
	end
end

local m_checked = module:metric("counter", "checked", "", "Stanzas from strangers checked against Corvid's verdicts.", { "host", "kind", "action" });
local m_refused = module:metric("counter", "refused", "", "Stanzas refused because Corvid blocks their sender.", { "host", "kind" });
local m_would = module:metric("counter", "would_refuse", "", "Stanzas observe mode let through that enforcement would have refused.", { "host", "kind" });
local m_fail_open = module:metric("counter", "fail_open", "", "Checks made without a current copy of the verdicts (corvidd unreachable), let through.", { "host" });
local m_fail_closed = module:metric("counter", "fail_closed", "", "Stanzas refused because no current copy of the verdicts was held (corvid_fail = \"closed\").", { "host" });
local m_diverted = module:metric("counter", "diverted", "", "Flagged messages from strangers put in the user's spam folder.", { "host" });
local m_would_divert = module:metric("counter", "would_divert", "", "Flagged messages observe mode delivered that enforcement would have put in the spam folder.", { "host" });
local m_released = module:metric("counter", "released", "", "Messages users released from their spam folder.", { "host" });
local m_deleted = module:metric("counter", "deleted", "", "Messages users deleted from their spam folder.", { "host" });
local m_vetoed = module:metric("counter", "vetoed", "", "Refusals by mod_anti_spam overridden because a local allow entry at corvidd lets the sender through.", { "host" });
local m_digests = module:metric("counter", "digests", "", "Strangers' message bodies digested, by the digest's verdict (none: too short for one; timeout: corvidd did not answer in time, delivered unchecked; unlisted: not digested, as the copy lists no digest).", { "host", "result" });
local m_digested_by = module:metric("counter", "digested_by", "", "Strangers' message bodies digested, by where: prosody (with corvidd's character tables) or corvidd (a body the tables do not cover, or before they are read).", { "host", "by" });
--- A counter's children for one host, looked up once: `with_labels`
-- builds a key string on every call. `(a)` or `(a, b)` are the labels after
-- the host's.
local function counters(metric, host)
	local memo = {};
	return function (a, b)
		local by = memo[a];
		if not by then
			by = {};
			memo[a] = by;
		end
		local c = by[b or ""];
		if not c then
			if b then c = metric:with_labels(host, a, b); else c = metric:with_labels(host, a); end
			by[b or ""] = c;
		end
		return c;
	end
end
local m_entries = module:metric("gauge", "mirror_entries", "", "Subjects in the copy of Corvid's verdicts.", {});
local m_age = module:metric("gauge", "mirror_age", "seconds", "Seconds since the copy of the verdicts was last confirmed current by corvidd.", {});

-- A JID is kept as the first 64 bits of its key's SHA-256 digest, a Lua
-- integer: integers are no work for the garbage collector, where a million
-- string keys made each of its atomic steps re-traverse every table written
-- to during the cycle (over 100 ms), and they need no string objects. Two
-- JIDs sharing 64 bits would take a second preimage of SHA-256 on them.
local function jid_int(bin) return (string.unpack(">i8", bin)); end

-- JID keys are spread over 256 tables by their low byte: a Lua table
-- rehashes all its entries at once when it grows, and one table of a
-- million entries stalls Prosody for over 100 ms each time it does.
-- Content digests (first 64 bits of the digest, spec §10) are kept the
-- same way in tables 256 to 511.
local DIGEST_SHARDS = 256;
local function jid_shard(jids, k, create, offset)
	local b = (k & 0xff) + (offset or 0);
	local t = jids[b];
	if not t and create then
		t = {};
		jids[b] = t;
	end
	return t;
end

local function decode_key(subject)
	local kind, rest = subject:match("^(%a+):(.*)$");
	if kind == "jid" and #rest == 64 and not rest:find("[^%x]") then
		return mirror.jids, tonumber(rest:sub(1, 16), 16);
	elseif kind == "digest" and #rest == 64 and not rest:find("[^%x]") then
		return mirror.jids, tonumber(rest:sub(1, 16), 16), DIGEST_SHARDS;
	elseif kind == "domain" then
		return mirror.domains, rest;
	end
	return nil;
end

-- The categories of reports (spec §5), numbered for the copy (0: not
-- known), and the three groups a user chooses for: phishing and malware
-- are dangerous, abuse is harassment, the rest is spam.
local category_code = {
	spam = 1, abuse = 2, phishing = 3, malware = 4, ["bulk-registration"] = 5,
	["muc-spam"] = 6, ["open-relay"] = 7, ["tor-exit"] = 8, ["open-proxy"] = 9,
};
local GROUPS = { "spam", "abuse", "dangerous" };
local function group_of(code)
	if code == 2 then return "abuse"; end
	if code == 3 or code == 4 then return "dangerous"; end
	return "spam";
end

-- Applies one entry to `jids`/`domains` (the live copy or a snapshot being
-- built); returns the change in the number of entries. A value is
-- action * 4 + origin, plus 16 * the category's code, plus 256 * a
-- domain's score in whole percent.
local function apply(jids, domains, subject, action, origin, score, category)
	local a, o = action_code[action], origin_code[origin];
	if not a or not o then return 0; end
	local tbl, key, offset = decode_key(subject);
	if not tbl then return 0; end
	local is_domain = tbl == mirror.domains;
	tbl = is_domain and domains or jid_shard(jids, key, true, offset);
	local before = tbl[key] ~= nil;
	if a == ALLOW and o == FEDERATION then
		tbl[key] = nil;
		if before and offset then jids.digests = jids.digests - 1; end
		return before and -1 or 0;
	end
	-- (How many digest subjects the copy holds: none, and no body needs a
	-- digest.)
	if not before and offset then jids.digests = (jids.digests or 0) + 1; end
	local pct = 0;
	if is_domain and type(score) == "number" then
		pct = math.max(0, math.min(100, math.floor(score * 100 + 1e-9)));
	end
	tbl[key] = a * 4 + o + 16 * (category_code[category] or 0) + 256 * pct;
	if is_domain then mirror.domains_changed = true; end
	return before and 0 or 1;
end

local function action_of(v) return (v % 16) // 4; end
local function origin_of(v) return v % 4; end
local function category_of(v) return (v % 256) // 16; end
local function percent_of(v) return v // 256; end

local function set_peers(list)
	if type(list) ~= "table" then return; end
	local peers = {};
	for _, h in ipairs(list) do peers[h] = true; end
	mirror.peers = peers;
end

-- Sync with corvidd ---------------------------------------------------------

local generation = 0; -- a newer sync loop makes the older one stop
local last_progress = 0;
local backoff = 1;

local function get(path, callback)
	return http.request(api_url .. path, {
		headers = {
			Authorization = "Bearer " .. (token or "");
			Accept = "application/json";
			["X-Corvid-Consumer"] = describe();
		};
	}, function (body, code)
		local data;
		if code == 200 then
			data = json.decode(body);
		elseif code == 401 or code == 403 then
			-- The token may have been created or rotated since: read it again.
			token = read_token() or token;
		end
		callback(data, code, body);
	end);
end

local snapshot, stream;
local digester, load_digest_tables;

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
		set_peers(data.peers);
		set_brake(data.brake);
		for _, e in ipairs(data.entries or {}) do
			count = count + apply(jids, domains, e.subject, e.action, e.origin, e.score, e.category);
		end
		if data.after and data.after ~= json.null then
			-- The next page after this one has let the event loop run.
			return snapshot(gen, data.after, jids, domains, count, cursor);
		end
		mirror.jids, mirror.domains, mirror.entries = jids, domains, count;
		mirror.cursor = cursor;
		mirror.loaded = true;
		mirror.domains_changed = true;
		mirror.fresh_at = os.time();
		backoff = 1;
		m_entries:with_labels():set(count);
		module:log("info", "copy of Corvid's verdicts loaded: %d subjects, cursor %d", count, cursor or 0);
		load_digest_tables();
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
		set_peers(data.peers);
		set_brake(data.brake);
		local count = mirror.entries;
		for _, d in ipairs(data.decisions or {}) do
			count = count + apply(mirror.jids, mirror.domains, d.subject, d.action, d.origin, d.score, d.category);
		end
		mirror.entries = count;
		mirror.cursor = data.next or since;
		m_entries:with_labels():set(count);
		if mirror.domains_changed then
			mirror.domains_changed = false;
			for _, recheck in pairs(mirror.s2s_rechecks) do recheck(); end
		end
		stream(gen, mirror.cursor);
	end);
end

local function restart(reason)
	if not api_loopback then return; end
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

-- Content digests are computed here with corvidd's character tables (GET
-- /v1/digest/tables, read once): a stranger's message then waits for no
-- round trip. Until they are read, and for the bodies they do not cover
-- (corvid_digest.lib.lua says which), corvidd computes the digest.
local tables_wanted = true;
function load_digest_tables()
	if not api_loopback or not tables_wanted then return; end
	tables_wanted = false;
	get("/v1/digest/tables", function (data, code)
		if data then
			-- Built in steps of a few milliseconds, the event loop running
			-- between them.
			local build = coroutine.create(function ()
				return digest_lib.new(data, hashes.sha256, coroutine.yield);
			end);
			local function step()
				local ok, d, err = coroutine.resume(build);
				if ok and coroutine.status(build) == "suspended" then
					module:add_timer(0, step);
				elseif ok and d then
					digester = d;
					module:log("info", "content digests computed in Prosody (Unicode %s tables from corvidd)", tostring(d.unicode));
				else
					module:log("warn", "corvidd's digest tables are not usable (%s): corvidd computes every digest", tostring(ok and err or d));
				end
			end
			step();
			return;
		end
		-- Read again with the next snapshot, or in a minute.
		module:log("info", "corvidd's digest tables not read (%s): corvidd computes digests meanwhile", tostring(code));
		tables_wanted = true;
		module:add_timer(60, load_digest_tables);
	end);
end

-- Verdicts ------------------------------------------------------------------

-- The keys a sender is looked up under (spec §8) depend on its JID alone:
-- they are computed once per bare JID and kept (`corvid_key_cache`
-- senders), so that a stranger's next message is checked with table reads
-- only, no hashing and no new strings for the garbage collector. An entry
-- holds whether the JID has a node, the integer of its JID key (false for
-- none), its normalized domain and the domain keys that cover it; false
-- stands for a JID that cannot be a subject.
local sender_keys = cache.new(module:get_option_number("corvid_key_cache", 10000));
local function keys_for(bare)
	local found = sender_keys:get(bare);
	if found ~= nil then return found or nil; end
	local node, host = jid_split(bare);
	local domain = host and keys.normalize_domain(host);
	if not domain then
		sender_keys:set(bare, false);
		return nil;
	end
	local digest = node and keys.jid_digest(node, host);
	found = {
		node = node ~= nil;
		k = digest and jid_int(digest) or false;
		domain = domain;
		covering = keys.domain_keys(domain);
	};
	sender_keys:set(bare, found);
	return found;
end

-- No covering entry (the common case) allocates nothing; never written to.
local NO_ENTRIES = setmetatable({}, { __newindex = function () error("NO_ENTRIES is read-only"); end });

--- The entries of the copy that concern a bare JID: its exact subject (the
-- JID, or for a server's own address its domain) and the covering domains.
local function entries_for(bare)
	local s = keys_for(bare);
	if not s then return nil; end
	local exact, covering = nil, nil;
	if s.node then
		local k = s.k;
		local shard = k and jid_shard(mirror.jids, k, false);
		exact = shard and shard[k];
	else
		exact = mirror.domains[s.domain];
	end
	for i, k in ipairs(s.covering) do
		local v = mirror.domains[k];
		if v and (s.node or i > 1) then
			covering = covering or {};
			covering[#covering + 1] = v;
		end
	end
	return exact, covering or NO_ENTRIES;
end

--- The action for a bare JID from the copy, whether a local list decided
-- it, and the group of the category behind it (spam, abuse, dangerous): spec §15.4's precedence of local lists (exact allow, exact
-- deny, covering allow, covering deny), then the most severe action among
-- the exact and covering subjects (§15.5).
local function verdict_for(bare)
	local exact, covering = entries_for(bare);
	if not covering then return ALLOW, false, "spam"; end
	if exact then
		local o = origin_of(exact);
		if o == LOCAL_ALLOW then return ALLOW, true, "spam"; end
		if o == LOCAL_DENY then return BLOCK, true, "spam"; end
	end
	for _, v in ipairs(covering) do
		if origin_of(v) == LOCAL_ALLOW then return ALLOW, true, "spam"; end
	end
	for _, v in ipairs(covering) do
		if origin_of(v) == LOCAL_DENY then return BLOCK, true, "spam"; end
	end
	-- The most severe action; its category is the one the user's choice
	-- applies to (the JID's own first).
	local worst, category = exact and action_of(exact) or ALLOW, exact and category_of(exact) or 0;
	for _, v in ipairs(covering) do
		if action_of(v) > worst then
			worst, category = action_of(v), category_of(v);
		end
	end
	return worst, false, group_of(category);
end

--- Whether a local allow entry at corvidd lets `bare` through.
local function allowed_locally(bare)
	local action, by_list = verdict_for(bare);
	return by_list and action == ALLOW;
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
	local checked, digests, digested_by =
		counters(m_checked, host_name), counters(m_digests, host_name), counters(m_digested_by, host_name);
	about.hosts[host_name] = mode;
	-- The brake at corvidd turns every host to observing at once.
	local function enforcing() return mode == "enforce" and not mirror.brake; end

	local function add_muc_hooks()
		-- Chat rooms on this server (load the module on the MUC component too):
		-- unaffiliated occupants whose JID or domain is blocked cannot join,
		-- and are stopped if blocked while inside.
		local function unaffiliated(room, bare)
			local affiliation = room:get_affiliation(bare);
			return not affiliation or affiliation == "none" or affiliation == "outcast";
		end
		-- Refuses `event`'s stanza when its sender, not affiliated with the
		-- room, is blocked; `kind` names the counter.
		local function refuse_in_room(event, bare, kind)
			if not unaffiliated(event.room, bare) or verdict_for(bare) ~= BLOCK then return; end
			if not enforcing() then
				m_would:with_labels(host_name, kind):add(1);
				about.would = about.would + 1;
				return;
			end
			m_refused:with_labels(host_name, kind):add(1);
			about.refused = about.refused + 1;
			event.origin.send(st.error_reply(event.stanza, "cancel", "forbidden",
				"Refused by this server's spam policy (Corvid: block)"));
			return true;
		end
		module:hook("muc-occupant-pre-join", function (event)
			return refuse_in_room(event, jid_bare(event.stanza.attr.from), "muc-join");
		end, 500);
		module:hook("muc-occupant-groupchat", function (event)
			local bare = event.occupant and event.occupant.bare_jid or jid_bare(event.stanza.attr.from);
			return refuse_in_room(event, bare, "muc-message");
		end, 500);
	end

	if module:get_host_type() ~= "local" then
		-- A component: only chat rooms are checked here.
		add_muc_hooks();
		module:log("info", "Corvid verdicts for the chat rooms of %s, mode %s", host_name, mode);
		return;
	end

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
		about.refused = about.refused + 1;
		return true;
	end

	-- The spam folder ------------------------------------------------------
	-- Flagged messages from strangers are kept per user (Prosody's archive
	-- storage: they survive restarts) for `corvid_spam_days`, listed,
	-- released and deleted with an ad-hoc command, and announced at most
	-- once a day. Each user chooses what happens to flagged messages.
	local retention = module:get_option_number("corvid_spam_days", 14) * 86400;
	local max_kept = module:get_option_number("corvid_spam_max", 500);
	local folder = module:open_store("corvid_spam", "archive");
	local notices = module:open_store("corvid_spam_notice");
	local prefs = module:open_store("corvid_spam_prefs");
	local choices = { folder = true, deliver = true, refuse = true };

	--- What `user` chose for flagged messages of `group` (spam, abuse or
	-- dangerous); a choice saved before groups existed applies to all.
	local function preference(user, group)
		local p = prefs:get(user);
		if not p then return "folder"; end
		local choice = p[group or "spam"] or p.flagged;
		return choices[choice] and choice or "folder";
	end

	local function expire(user)
		folder:delete(user, { ["end"] = os.time() - retention });
	end

	local function kept(user)
		local n = 0;
		for _ in folder:find(user, { start = os.time() - retention }) do n = n + 1; end
		return n;
	end

	local function notify(user, host)
		local now = os.time();
		local last = notices:get(user);
		if last and now - (last.at or 0) < 86400 then return; end
		notices:set(user, { at = now });
		module:send(st.message({ from = host, to = user .. "@" .. host, type = "chat" })
			:text_tag("body", "A message from someone you have not talked to was held in your spam folder, "
				.. "because this server's spam protection (Corvid) flags its sender. Nothing was deleted: "
				.. "review it with the command \"Spam folder\" of your server (ad-hoc commands, XEP-0050). "
				.. "You will get at most one such notice a day."));
	end

	local function divert(event, user, host)
		local stanza = event.stanza;
		expire(user);
		if kept(user) >= max_kept then
			-- A full folder keeps what it has; the newest is refused, not lost silently.
			return refuse(event, "message", "flag, and your spam folder is full");
		end
		local ok, err = folder:append(user, nil, st.clone(stanza), os.time(), jid_bare(stanza.attr.from));
		if not ok then
			module:log("error", "cannot keep a flagged message for %s@%s (%s): delivering it", user, host, tostring(err));
			return;
		end
		m_diverted:with_labels(host_name):add(1);
		notify(user, host);
		return true;
	end

	local function excerpt(stanza)
		local body = stanza:get_child_text("body") or "";
		body = body:gsub("%s+", " ");
		-- At most 80 characters (whole ones: cut at a character's start).
		local chars = utf8.len(body);
		local cut = chars and chars > 80 and utf8.offset(body, 78);
		if cut then body = body:sub(1, cut - 1) .. "..."; end
		return body;
	end

	-- What users do in their folders goes back to corvidd as local
	-- signals: a release counts against the verdict that flagged the
	-- message (visible in `corvid why`), a deletion is recorded. The user
	-- is named by a hash only.
	local function signal(sender, kind, user_jid)
		if not api_loopback then return; end
		http.request(api_url .. "/v1/signals", {
			method = "POST";
			body = json.encode({ sender = sender, kind = kind, user = hashes.sha256(user_jid, true):sub(1, 32) });
			headers = {
				Authorization = "Bearer " .. (token or "");
				["Content-Type"] = "application/json";
			};
		}, function (response, code)
			if code ~= 200 then
				module:log("warn", "corvidd did not record a %s from %s's spam folder (%s %s)", kind, user_jid,
					tostring(code), tostring(response and response:sub(1, 200) or ""));
			end
		end);
	end

	local review_node = "urn:x-corvid:spam-folder";
	local function review(_, data, state)
		local user, host = jid_split(data.from);
		if data.action == "cancel" then return { status = "canceled" }; end
		expire(user);
		if not state then
			local options = {};
			for id, stanza, when, with in folder:find(user, { start = os.time() - retention, limit = 100 }) do
				options[#options + 1] = {
					value = id;
					label = ("%s, from %s: %s"):format(datetime.datetime(when), tostring(with), excerpt(stanza));
				};
			end
			local layout = {
				title = "Spam folder";
				instructions = #options == 0 and "Your spam folder is empty."
					or ("%d held message(s). Release the ones you want delivered (they arrive with their original time), or delete them. Held messages are deleted after %d days."):format(#options, retention // 86400);
				{ name = "FORM_TYPE", type = "hidden", value = review_node };
				{ name = "messages", type = "list-multi", label = "Messages", options = options };
				{ name = "action", type = "list-single", label = "Do with the selected messages", value = "release",
					options = { { label = "Release into my inbox", value = "release" }, { label = "Delete", value = "delete" } } };
			};
			local what = {
				spam = "flagged as spam (or a suspicious sender)",
				abuse = "flagged for abuse or harassment",
				dangerous = "flagged for phishing or malware",
			};
			for _, group in ipairs(GROUPS) do
				layout[#layout + 1] = { name = "flagged_" .. group, type = "list-single",
					label = "From now on, messages from strangers " .. what[group],
					value = preference(user, group),
					options = { { label = "Go to this spam folder", value = "folder" },
						{ label = "Are delivered", value = "deliver" }, { label = "Are refused", value = "refuse" } } };
			end
			local form = dataforms.new(layout);
			return { status = "executing", actions = { "complete", default = "complete" }, form = form }, { form = form };
		end
		local fields, err = state.form:data(data.form);
		if err then
			return { status = "completed", info = "The form was not understood (" .. tostring(next(err)) .. "): nothing changed." };
		end
		local chosen, changed = {}, false;
		for _, group in ipairs(GROUPS) do
			local c = fields["flagged_" .. group];
			chosen[group] = choices[c] and c or preference(user, group);
			changed = changed or (choices[c] and c ~= preference(user, group));
		end
		if changed then prefs:set(user, chosen); end
		local wanted = {};
		for _, id in ipairs(fields.messages or {}) do wanted[id] = true; end
		local released, deleted = 0, 0;
		for id, stanza, when, with in folder:find(user, { start = os.time() - retention }) do
			if wanted[id] then
				if with then
					signal(with, fields.action == "release" and "release" or "delete", user .. "@" .. host);
				end
				if fields.action == "release" then
					stanza:tag("delay", { xmlns = "urn:xmpp:delay", from = host, stamp = datetime.datetime(when) }):up();
					stanza.corvid_released = true;
					prosody.core_post_stanza(prosody.hosts[host], stanza);
					released = released + 1;
				else
					deleted = deleted + 1;
				end
				folder:delete(user, { key = id });
			end
		end
		m_released:with_labels(host_name):add(released);
		m_deleted:with_labels(host_name):add(deleted);
		return { status = "completed", info = ("Released %d, deleted %d. Flagged messages now: spam %s, abuse %s, phishing and malware %s.")
			:format(released, deleted, preference(user, "spam"), preference(user, "abuse"), preference(user, "dangerous")) };
	end
	module:depends("adhoc");
	local adhoc_new = module:require "adhoc".new;
	module:provides("adhoc", adhoc_new("Spam folder", review_node, review, "local_user"));

	-- Content digests (spec §10): a stranger's message that its sender's
	-- verdict lets through is held while corvidd digests its body (never
	-- an end-to-end encryption fallback), for at most
	-- `corvid_digest_timeout` seconds; then it is delivered, put in the spam
	-- folder or refused, as a flag would be (a digest never blocks).
	local digests_on = module:get_option_boolean("corvid_digests", true);
	-- Digest requests reuse their connection where Prosody's HTTP client
	-- can (Prosody 13 keeps a pooled connection alive; 0.12 ignores the
	-- option and connects each time).
	local digest_http = http.new({ connection_pooling = true });
	local digest_timeout = module:get_option_number("corvid_digest_timeout", 0.5);
	local encrypted_payloads = {
		{ "encrypted", "eu.siacs.conversations.axolotl" }, -- OMEMO (legacy)
		{ "encrypted", "urn:xmpp:omemo:2" }, -- OMEMO 2
		{ "openpgp", "urn:xmpp:openpgp:0" }, -- OpenPGP for XMPP
		{ "x", "jabber:x:encrypted" }, -- legacy OpenPGP
		{ "encryption", "urn:xmpp:eme:0" }, -- XEP-0380 explicit message encryption
	};
	local function encrypted(stanza)
		for _, p in ipairs(encrypted_payloads) do
			if stanza:get_child(p[1], p[2]) then return true; end
		end
		return false;
	end

	-- A stranger's message whose body's digest is flagged: delivered, put
	-- in the spam folder or refused, as the user chose for its category.
	-- Returns true when it was refused or diverted (false: deliver it).
	local function act_on_digest(event, user, host, category)
		if not enforcing() then
			m_would_divert:with_labels(host_name):add(1);
			return false;
		end
		local choice = preference(user, group_of(category));
		if choice == "deliver" then return false; end
		if choice == "refuse" then
			refuse(event, "message", "flag (content)");
			return true;
		end
		-- Not kept when storage failed: delivered.
		return divert(event, user, host) == true;
	end

	local function check_digest(event, user, host)
		local stanza, origin = event.stanza, event.origin;
		local body = stanza:get_child_text("body");
		if not digests_on or not api_loopback or not body or body == "" or encrypted(stanza) then return; end
		if (mirror.jids.digests or 0) == 0 then
			-- No digest is listed: whatever the body's digest, it is allowed.
			digests("unlisted"):add(1);
			return;
		end
		-- (The first 64 bits of the digest: a subject text is never built.)
		local k = digester and digester.digest_int(body);
		if k ~= nil then
			-- Digested here: checked at once against the copy.
			digested_by("prosody"):add(1);
			local shard = k and jid_shard(mirror.jids, k, false, DIGEST_SHARDS);
			local v = shard and shard[k];
			if not v or action_of(v) == ALLOW then
				digests(k and "allow" or "none"):add(1);
				return;
			end
			digests("flag"):add(1);
			return act_on_digest(event, user, host, category_of(v)) or nil;
		end
		digested_by("corvidd"):add(1);
		local done = false;
		local function deliver(result)
			if done then return; end
			done = true;
			digests(result):add(1);
			stanza.corvid_checked = true;
			prosody.core_post_stanza(origin, stanza);
		end
		digest_http:request(api_url .. "/v1/digest", {
			method = "POST";
			body = json.encode({ body = body });
			headers = {
				Authorization = "Bearer " .. (token or "");
				["Content-Type"] = "application/json";
			};
		}, function (response, code)
			if done then return; end
			local data = code == 200 and json.decode(response) or nil;
			if not data then return deliver("error"); end
			if data.action ~= "flag" and data.action ~= "block" then
				return deliver(data.digest and data.digest ~= json.null and "allow" or "none");
			end
			done = true;
			digests("flag"):add(1);
			stanza.corvid_checked = true;
			if not act_on_digest(event, user, host, category_code[data.category] or 0) then
				prosody.core_post_stanza(origin, stanza);
			end
		end);
		module:add_timer(digest_timeout, function () deliver("timeout"); end);
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
			if fail_mode == "closed" and enforcing() then
				m_fail_closed:with_labels(host_name):add(1);
				return refuse(event, kind, "verdicts unavailable");
			end
			m_fail_open:with_labels(host_name):add(1);
			about.fail_open = about.fail_open + 1;
			if os.time() - fail_logged > 60 then
				fail_logged = os.time();
				module:log("warn", "no current copy of Corvid's verdicts (corvidd unreachable?): stanzas from strangers pass unchecked (counted as fail_open)");
			end
			if not mirror.loaded then return; end
		end
		local action, by_list, group = verdict_for(sender);
		checked(kind, action_name[action]):add(1);
		if action == BLOCK then
			if enforcing() then
				module:log("debug", "refused %s from %s to %s (Corvid: block)", kind, sender, stanza.attr.to);
				return refuse(event, kind, "block");
			end
			m_would:with_labels(host_name, kind):add(1);
			about.would = about.would + 1;
		elseif action == FLAG and kind == "message" then
			if not enforcing() then
				m_would_divert:with_labels(host_name):add(1);
				return;
			end
			local choice = preference(user, group);
			if choice == "refuse" then
				return refuse(event, kind, "flag");
			elseif choice == "folder" then
				return divert(event, user, host);
			end
		elseif action == ALLOW and not by_list and kind == "message" and current() then
			-- (A local allow entry wins over content digests too.)
			return check_digest(event, user, host);
		end
	end

	-- mod_anti_spam (prosody-modules) fires spam-blocked before it bounces
	-- or drops a stanza, and a handler returning false vetoes that: a local
	-- allow entry at corvidd wins there too.
	module:hook("spam-blocked", function (event)
		local from = event.stanza and event.stanza.attr.from;
		local sender = from and jid_bare(from);
		if not sender or not allowed_locally(sender) then return; end
		m_vetoed:with_labels(host_name):add(1);
		module:log("debug", "mod_anti_spam's refusal of %s from %s (%s) overridden: a local allow entry at corvidd",
			event.stanza.name, sender, tostring(event.spam_reason));
		return false;
	end, 1000);

	local function on_message(event)
		local stanza = event.stanza;
		local t = stanza.attr.type;
		if t == "groupchat" or t == "error" or stanza.corvid_released or stanza.corvid_checked then return; end
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

	-- Server-to-server: a whole domain's stream is refused only when a
	-- local deny entry covers it, or its federation `block` reaches the
	-- stricter `corvid_s2s_threshold`; never a trusted peer's domain or
	-- its services, an exempt domain, or one of ours.
	local s2s_threshold = module:get_option_number("corvid_s2s_threshold", 0.9);
	local function s2s_refusal(remote)
		if not remote or mirror.peers[remote] or exempt_domains:contains(remote) or prosody.hosts[remote] then
			return nil;
		end
		local domain = keys.normalize_domain(remote);
		if not domain then return nil; end
		local found = {};
		for _, k in ipairs(keys.domain_keys(domain)) do
			local v = mirror.domains[k];
			if v then found[#found + 1] = v; end
		end
		for _, v in ipairs(found) do
			if origin_of(v) == LOCAL_ALLOW then return nil; end
		end
		for _, v in ipairs(found) do
			if origin_of(v) == LOCAL_DENY then return "the domain is on this server's deny list"; end
		end
		for _, v in ipairs(found) do
			if action_of(v) == BLOCK and percent_of(v) >= math.floor(s2s_threshold * 100 + 1e-9) then
				return ("the federation blocks the domain (score %d%%)"):format(percent_of(v));
			end
		end
		return nil;
	end

	local function close_if_refused(session)
		local why = s2s_refusal(session.from_host);
		if not why then return; end
		if not enforcing() then
			m_would:with_labels(host_name, "s2s"):add(1);
			return;
		end
		local text = "Refused by this server's spam policy (Corvid: " .. why .. ")";
		if policy_url then text = text .. ". See " .. policy_url; end
		module:log("info", "closing the s2s stream from %s: %s", session.from_host, why);
		m_refused:with_labels(host_name, "s2s"):add(1);
		session:close({ condition = "policy-violation", text = text });
		return true;
	end

	do
		module:hook("s2sin-established", function (event)
			local session = event.session;
			if session.to_host == host_name or session.host == host_name then
				close_if_refused(session);
			end
		end, 500);
		-- A domain blocked while its stream is open: the stream is closed.
		mirror.s2s_rechecks[host_name] = function ()
			for session in pairs(prosody.incoming_s2s) do
				if (session.to_host == host_name or session.host == host_name) and session.from_host then
					close_if_refused(session);
				end
			end
		end;
		module:hook_global("server-stopping", function () mirror.s2s_rechecks[host_name] = nil; end);
	end

	module:log("info", "Corvid verdicts from %s, mode %s, failing %s", api_url, mode, fail_mode);
end
