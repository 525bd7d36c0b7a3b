-- Shared by the check scripts beside it: makes one Prosody installation's
-- libraries (arg[1], its source directory) and this directory's parent
-- (mod_corvid's libraries) loadable, and returns what the scripts share.
local source_dir = arg[1];
package.path = source_dir .. "/?.lua;" .. package.path;
package.cpath = source_dir .. "/?.so;" .. package.cpath;
local here = arg[0]:match("^(.*)/test/[^/]+%.lua$") or "hooks/prosody";
package.path = here .. "/?.lib.lua;" .. package.path;
-- Prosody 13 names its libraries prosody.util.*: its loader maps them.
pcall(require, "loader");

local json = require "util.json";

local M = {};

--- A JSON file, decoded.
function M.read_json(path)
	local f = assert(io.open(path));
	local text = f:read("*a");
	f:close();
	return json.decode(text);
end

--- A digester built from a file of corvidd's digest tables.
function M.digester(tables_file)
	local hashes = require "util.hashes";
	return assert(require("corvid_digest").new(M.read_json(tables_file), hashes.sha256));
end

return M;
