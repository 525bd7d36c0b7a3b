-- Shared by the check scripts beside it: makes one Prosody installation's
-- libraries (arg[1], its source directory) and this directory's parent
-- (mod_corvid's libraries) loadable.
local source_dir = arg[1];
package.path = source_dir .. "/?.lua;" .. package.path;
package.cpath = source_dir .. "/?.so;" .. package.cpath;
local here = arg[0]:match("^(.*)/test/[^/]+%.lua$") or "hooks/prosody";
package.path = here .. "/?.lib.lua;" .. package.path;
-- Prosody 13 names its libraries prosody.util.*: its loader maps them.
pcall(require, "loader");
