-- Checks corvid_digest.lib.lua against expected normalizations and
-- digests (the spec's vectors and random texts, computed by
-- corvid-protocol) with the utility libraries of one Prosody installation:
--   lua5.4 hooks/prosody/test/digest.lua PROSODY_SOURCE_DIR TABLES_FILE CASES_FILE
-- TABLES_FILE is what corvidd serves at GET /v1/digest/tables; CASES_FILE
-- a JSON array of { body, normalized, subject } (subject null: no digest).
-- A body the library leaves to corvidd (nil) is counted, not checked.
-- Prints a summary; exits non-zero on any mismatch.

local tables_file, cases_file = arg[2], arg[3];
local common = dofile((arg[0]:match("^(.*)/[^/]+$") or ".") .. "/paths.lua");

local json = require "util.json";

local digester = common.digester(tables_file);
local cases = common.read_json(cases_file);

local checked, deferred, failed = 0, 0, 0;
for _, case in ipairs(cases) do
	local normalized = digester.normalize(case.body);
	if normalized == nil then
		deferred = deferred + 1;
	else
		checked = checked + 1;
		local subject = normalized and digester.digest(case.body) or nil;
		local want_subject = case.subject ~= json.null and case.subject or nil;
		-- The integer mod_corvid looks digests up by: the subject's first
		-- 64 bits, as the copy keeps them (decode_key).
		local k = digester.digest_int(case.body);
		local want_k = want_subject and tonumber(want_subject:sub(8, 23), 16) or false;
		local ok;
		if normalized == false then
			ok = want_subject == nil and k == false;
		else
			ok = normalized == case.normalized and subject == want_subject and k == want_k;
		end
		if not ok then
			failed = failed + 1;
			if failed <= 20 then
				print(("MISMATCH %q: got %q %s (%s), want %q %s (%s)"):format(case.body, tostring(normalized),
					tostring(subject), tostring(k), tostring(case.normalized), tostring(want_subject), tostring(want_k)));
			end
		end
	end
end

print(("checked %d, left to corvidd %d, mismatched %d"):format(checked, deferred, failed));
os.exit(failed == 0 and 0 or 1);
