-- What digesting a stranger's message costs inside Prosody's Lua, with the
-- CPU caches cold (as when messages are minutes apart): the module's own
-- share of the added latency, which the end-to-end bench cannot resolve.
--   lua5.4 hooks/prosody/test/digest_bench.lua PROSODY_SOURCE_DIR TABLES_FILE BODIES_FILE
-- BODIES_FILE: a JSON array of [name, body]. Prints one line per body.

local tables_file, bodies_file = arg[2], arg[3];
local common = dofile((arg[0]:match("^(.*)/[^/]+$") or ".") .. "/paths.lua");

local time = require "util.time";

local digester = common.digester(tables_file);
-- 16 MB of other data, walked between two digests, evicts the caches.
local other = {};
for i = 1, 2000000 do other[i] = i; end
local function evict()
	local sum = 0;
	for i = 1, #other, 8 do sum = sum + other[i]; end
	return sum;
end

local n = 400;
for _, case in ipairs(common.read_json(bodies_file)) do
	local name, body = case[1], case[2];
	local took, where = {}, "prosody";
	for i = 1, n do
		evict();
		local text = ("message %d: %s"):format(i, body);
		local t0 = time.now();
		-- (As mod_corvid asks: the integer it looks the digest up by.)
		local k = digester.digest_int(text);
		took[i] = time.now() - t0;
		if k == nil then where = "corvidd"; end
	end
	table.sort(took);
	print(("- digest in Lua, cold caches (%s): p50 %.1f µs, p99 %.1f µs (%d bodies; digested by %s)")
		:format(name, took[n // 2] * 1e6, took[math.ceil(n * 0.99)] * 1e6, n, where));
end
