-- Checks corvid_keys.lib.lua against spec/test-vectors/subjects.json with
-- the utility libraries of one Prosody installation:
--   lua5.4 hooks/prosody/test/keys.lua PROSODY_SOURCE_DIR VECTORS_FILE
-- Each JID and domain input is first prepared as Prosody prepares what it
-- delivers (util.jid.prep, after trimming white space: a JID on the wire
-- has none); inputs that Prosody itself refuses are counted, not checked.
-- Prints a summary; exits non-zero on any mismatch.

local vectors_file = arg[2];
local common = dofile((arg[0]:match("^(.*)/[^/]+$") or ".") .. "/paths.lua");

local jid = require "util.jid";
local keys = require "corvid_keys";

local vectors = common.read_json(vectors_file);

local checked, refused, failed = 0, 0, 0;
local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")); end

for _, case in ipairs(vectors.jids) do
	local wire = jid.prep(trim(case.input));
	if not wire then
		refused = refused + 1;
	else
		local node, host = jid.split(wire);
		local got = keys.jid_key(node, host);
		checked = checked + 1;
		if got ~= case.key then
			failed = failed + 1;
			print(("MISMATCH jid %q (wire %q): got %s, want %s"):format(case.input, wire, tostring(got), case.key));
		end
	end
end

for _, case in ipairs(vectors.domains) do
	local wire = jid.prep(trim(case.input));
	if not wire then
		refused = refused + 1;
	else
		local domain = keys.normalize_domain(wire);
		local got = case.subdomains and ("domain:*." .. domain) or ("domain:" .. domain);
		checked = checked + 1;
		if got ~= case.key then
			failed = failed + 1;
			print(("MISMATCH domain %q (wire %q): got %s, want %s"):format(case.input, wire, got, case.key));
		end
	end
end

for _, case in ipairs(vectors.domain_lookups) do
	local got = keys.domain_keys(case.domain);
	local want = {};
	for i, k in ipairs(case.keys) do want[i] = (k:gsub("^domain:", "")); end
	checked = checked + 1;
	if table.concat(got, " ") ~= table.concat(want, " ") then
		failed = failed + 1;
		print(("MISMATCH lookup %q: got %s, want %s"):format(case.domain, table.concat(got, " "), table.concat(want, " ")));
	end
end

print(("checked %d, refused by Prosody's prep %d, mismatched %d"):format(checked, refused, failed));
os.exit(failed == 0 and checked > 0 and 0 or 1);
