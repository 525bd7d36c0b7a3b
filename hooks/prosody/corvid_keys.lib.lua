-- Corvid subject keys computed from the JIDs and domains Prosody delivers
-- (spec §8): the same keys corvidd computes, so that a verdict mirrored
-- from corvidd is found under the name a stanza carries.
--
-- Prosody has already prepared every JID it hands to a module (nodeprep,
-- and IDNA2003 nameprep of the whole domain: `faß.de` arrives as
-- `fass.de`). What is left of §8.3 is step 5: an A-label stands for its
-- U-label when nameprep keeps that U-label (and the whole name) unchanged.
-- Used by mod_corvid (module:require "corvid_keys") and by the test suite,
-- which runs it against spec/test-vectors/subjects.json on Prosody 0.12
-- and 13.

local encodings = require "util.encodings";
local hashes = require "util.hashes";

local nameprep = encodings.stringprep.nameprep;
local to_unicode = encodings.idna.to_unicode;
local to_ascii = encodings.idna.to_ascii;
local sha256 = hashes.sha256;

local M = {};

local function split_labels(name)
	local labels = {};
	for label in (name .. "."):gmatch("([^.]*)%.") do
		labels[#labels + 1] = label;
	end
	return labels;
end

-- The U-label an `xn--` label stands for, when nameprep keeps it (strict:
-- unassigned code points are not kept) and it encodes back to the label.
local function stable_u_label(label)
	local u = to_unicode(label);
	if not u or u == label or u:find("^[%z\1-\127]*$") then
		return nil;
	end
	if nameprep(u, true) ~= u or to_ascii(u) ~= label then
		return nil;
	end
	return u;
end

--- A domain as Prosody delivers it (already nameprep'd) in Corvid's form
-- (spec §8.3 step 5). Returns nil for what cannot be a domain subject.
function M.normalize_domain(host)
	if type(host) ~= "string" or host == "" then
		return nil;
	end
	host = host:gsub("%.$", "");
	if not host:find("xn--", 1, true) then
		return host;
	end
	local labels = split_labels(host);
	local changed = false;
	for i, label in ipairs(labels) do
		if label:sub(1, 4) == "xn--" then
			local u = stable_u_label(label);
			if u then
				labels[i] = u;
				changed = true;
			end
		end
	end
	if not changed then
		return host;
	end
	local candidate = table.concat(labels, ".");
	-- The decoded name must pass nameprep unchanged as a whole (its bidi
	-- rule applies to the whole name), or the A-labels stay.
	if nameprep(candidate, true) == candidate then
		return candidate;
	end
	return host;
end

--- The binary SHA-256 under which a JID key is mirrored, from the node and
-- host of a prepared JID; nil without a node.
function M.jid_digest(node, host)
	if not node or node == "" then
		return nil;
	end
	local domain = M.normalize_domain(host);
	if not domain then
		return nil;
	end
	return sha256(node .. "@" .. domain);
end

--- The text of a JID key (`jid:` and 64 hex digits).
function M.jid_key(node, host)
	local digest = M.jid_digest(node, host);
	if not digest then
		return nil;
	end
	return "jid:" .. (digest:gsub(".", function (c) return ("%02x"):format(c:byte()); end));
end

--- The domain keys that cover `domain` (normalized), without the
-- `domain:` prefix: the exact name, then `*.` + the name and each parent
-- with at least two labels, nearest first (spec §8.4).
function M.domain_keys(domain)
	local keys = { domain };
	local rest = domain;
	while rest:find(".", 1, true) do
		keys[#keys + 1] = "*." .. rest;
		local parent = rest:match("^[^.]*%.(.*)$");
		if not parent or not parent:find(".", 1, true) then
			break;
		end
		rest = parent;
	end
	return keys;
end

return M;
