-- Content digests of message bodies (spec §10) computed in Prosody, so
-- that a stranger's message waits for no round trip to corvidd.
--
-- Lua has no Unicode tables, so corvidd lends its own (GET
-- /v1/digest/tables, from the same Unicode version it digests with): for
-- each non-ASCII character, what steps 1-2 (NFKC, case fold, NFKC) make of
-- it when that does not depend on its neighbours, and its classes
-- (label, Alphabetic, numeric, White_Space). A body holding a character
-- whose normalization depends on its neighbours (a combining mark, a
-- conjoining jamo: about 1,300 code points), or a URL host with an `xn--`
-- label (Punycode is not decoded here), is not digested here: `digest`
-- answers nil and the caller asks corvidd, which runs the whole algorithm.
-- Everything else follows spec/corvid.md §10 and §10.1 step by step; the
-- test suite checks this file against spec/test-vectors/digests.json and
-- against corvid-protocol on random texts (hooks/prosody/test/digest.lua).

local M = {};

local byte, sub, find, gsub = string.byte, string.sub, string.find, string.gsub;
local concat = table.concat;
local utf8_char, utf8_codepoint, utf8_len = utf8.char, utf8.codepoint, utf8.len;

-- One non-ASCII character of valid UTF-8 (Prosody delivers only that).
local NON_ASCII = "[\194-\244][\128-\191]*";

local UPPER = {};
for c = 65, 90 do UPPER[string.char(c)] = string.char(c + 32); end

local function byte_set(chars)
	local set = {};
	for i = 1, #chars do set[byte(chars, i)] = true; end
	return set;
end
local ALNUM = {};
for c = 48, 57 do ALNUM[c] = true; end
for c = 97, 122 do ALNUM[c] = true; end
for c = 65, 90 do ALNUM[c] = true; end
local SCHEME = byte_set("+-.");
for c in pairs(ALNUM) do SCHEME[c] = true; end
local INSIDE = byte_set(".@/:_%&=?#+~$\\");
local TRAILING = byte_set(".,:;!?'");
local ASCII_DELIM = byte_set("\t\n\v\f\r <>\"");

-- The longest body digested here (a longer one is left to corvidd).
local MAX_BODY = 16 * 1024;
-- A longer run of labels is not a host name.
local MAX_HOST_CHARS = 253;

-- A set of code points from `[first, last]` ranges, by blocks of 256:
-- true for a whole block, else a table of members.
local function block_set(ranges)
	local blocks = {};
	for _, r in ipairs(ranges) do
		local lo, hi = math.tointeger(r[1]), math.tointeger(r[2]);
		if not lo or not hi or lo > hi or hi > 0x10FFFF then return nil; end
		local cp = lo;
		while cp <= hi do
			local b = cp >> 8;
			local block_end = (b << 8) + 255;
			if cp == b << 8 and hi >= block_end then
				blocks[b] = true;
				cp = block_end + 1;
			else
				local t = blocks[b];
				if t ~= true then
					if not t then t = {}; blocks[b] = t; end
					local last = math.min(hi, block_end);
					for x = cp, last do t[x] = true; end
				end
				cp = math.min(hi, block_end) + 1;
			end
		end
	end
	return blocks;
end

local function in_set(blocks, cp)
	local b = blocks[cp >> 8];
	return b == true or (b ~= nil and b[cp] == true);
end

--- A digester from the tables corvidd serves (decoded JSON) and a SHA-256
-- function (binary string -> binary string or hex, as `hex` asks).
-- Returns nil and an error when the tables are not usable.
function M.new(tables, sha256)
	if type(tables) ~= "table" or tables.version ~= 1 or type(tables.map) ~= "table" then
		return nil, "unknown digest tables";
	end
	local min_chars = math.tointeger(tables.min_chars) or 24;
	-- Steps 1-2 per character; "\0" (never in XML text) marks one that
	-- needs its neighbours.
	local MAP, count = {}, 0;
	for c, to in pairs(tables.map) do
		if type(c) ~= "string" or type(to) ~= "string" then return nil, "bad map entry"; end
		MAP[c] = to;
	end
	for _, r in ipairs(tables.context or {}) do
		local lo, hi = math.tointeger(r[1]), math.tointeger(r[2]);
		if not lo or not hi or hi > 0x10FFFF or lo > hi then return nil, "bad range"; end
		count = count + hi - lo + 1;
		if count > 200000 then return nil, "too many context characters"; end
		for cp = lo, hi do
			if cp < 0xD800 or cp > 0xDFFF then MAP[utf8_char(cp)] = "\0"; end
		end
	end
	local LABEL = block_set(tables.label or {});
	local ALPHA = block_set(tables.alphabetic or {});
	local SPACE = block_set(tables.space or {});
	if not LABEL or not ALPHA or not SPACE then return nil, "bad range"; end
	-- Step 4-5 per character: numeric ones become "0", white space " ".
	local CLASS = {};
	for _, r in ipairs(tables.numeric or {}) do
		local lo, hi = math.tointeger(r[1]), math.tointeger(r[2]);
		if not lo or not hi or hi > 0x10FFFF or hi - lo > 20000 then return nil, "bad range"; end
		for cp = lo, hi do CLASS[utf8_char(cp)] = "0"; end
	end
	for _, r in ipairs(tables.space or {}) do
		for cp = r[1], r[2] do CLASS[utf8_char(cp)] = " "; end
	end

	-- The code point at byte `i` and the byte after it.
	local function at(s, i)
		local b = byte(s, i);
		if not b then return nil, i; end
		if b < 0x80 then return b, i + 1; end
		local len = b >= 0xF0 and 4 or b >= 0xE0 and 3 or 2;
		return utf8_codepoint(s, i), i + len;
	end
	-- The byte where the character before byte `i` starts.
	local function before(s, i)
		local q = i - 1;
		while q > 1 do
			local b = byte(s, q);
			if b < 0x80 or b >= 0xC0 then break; end
			q = q - 1;
		end
		return q;
	end
	local function is_label(cp)
		if cp < 0x80 then return ALNUM[cp] == true or cp == 45; end
		return in_set(LABEL, cp);
	end
	local function is_scheme(cp) return cp < 0x80 and SCHEME[cp] == true; end
	local function is_alpha(cp)
		if cp < 0x80 then return (cp >= 97 and cp <= 122) or (cp >= 65 and cp <= 90); end
		return in_set(ALPHA, cp);
	end
	local function is_delim(cp)
		if cp < 0x80 then return ASCII_DELIM[cp] == true; end
		return in_set(SPACE, cp);
	end

	-- The first delimiter at or after byte `from` (or past the end).
	local function delimited_end(s, from)
		local i = from;
		local n = #s;
		while i <= n do
			local cp, nx = at(s, i);
			if is_delim(cp) then return i; end
			i = nx;
		end
		return n + 1;
	end

	-- Trailing punctuation and unmatched closing brackets off the end of
	-- s[start, stop) (§10.1); never before `start`.
	local function trim_end(s, start, stop)
		local piece = sub(s, start, stop - 1);
		local open = { [41] = select(2, gsub(piece, "%(", "")), [93] = select(2, gsub(piece, "%[", "")), [125] = select(2, gsub(piece, "{", "")) };
		local close = { [41] = select(2, gsub(piece, "%)", "")), [93] = select(2, gsub(piece, "%]", "")), [125] = select(2, gsub(piece, "}", "")) };
		while stop > start do
			local b = byte(s, stop - 1);
			if TRAILING[b] then
				stop = stop - 1;
			elseif open[b] and close[b] > open[b] then
				close[b] = close[b] - 1;
				stop = stop - 1;
			else
				break;
			end
		end
		return stop;
	end

	-- A host as the digest shows it; nil when a label needs Punycode.
	local function display_host(host)
		if find("." .. host, ".xn--", 1, true) then return nil; end
		if sub(host, 1, 4) == "www." and #host > 4 then return sub(host, 5); end
		return host;
	end

	-- The host of a scheme URL's text after `//`: false when it has none,
	-- nil when it needs Punycode.
	local function scheme_host(rest)
		local authority = rest:match("^[^/?#]*");
		authority = authority:match("^.*@(.*)$") or authority;
		local host;
		if sub(authority, 1, 1) == "[" then
			host = authority:match("^%[[^%]]*%]") or authority;
		else
			host = authority:match("^[^:]*");
		end
		host = host:gsub("%.+$", "");
		if host == "" then return false; end
		return display_host(host);
	end

	-- The labels from byte `i`: their end, how many, how many characters.
	local function host_run(s, i)
		local stop, labels, chars = i, 0, 0;
		while true do
			local start = stop;
			while true do
				local cp, nx = at(s, stop);
				if not cp or not is_label(cp) then break; end
				stop = nx;
				chars = chars + 1;
			end
			if stop == start then break; end
			labels = labels + 1;
			local nextcp = byte(s, stop) == 46 and at(s, stop + 1);
			if nextcp and is_label(nextcp) then
				stop = stop + 1;
				chars = chars + 1;
			else
				break;
			end
		end
		return stop, labels, chars;
	end

	local function tld_ok(host)
		local last = host:match("([^.]*)$");
		local c1, n1 = at(last, 1);
		local c2 = c1 and at(last, n1);
		return c1 ~= nil and c2 ~= nil and is_alpha(c1) and is_alpha(c2);
	end

	local function dotted_quad(host)
		local a, b, c, d = host:match("^([0-9][0-9]?[0-9]?)%.([0-9][0-9]?[0-9]?)%.([0-9][0-9]?[0-9]?)%.([0-9][0-9]?[0-9]?)$");
		return a ~= nil and tonumber(a) <= 255 and tonumber(b) <= 255 and tonumber(c) <= 255 and tonumber(d) <= 255;
	end

	-- The URL starting at byte `i`, a label character after `prev` (nil at
	-- the start), which is neither a label nor a scheme character: its
	-- end, and its host (false to keep its text); nil when none starts
	-- there; "punycode" when its host needs decoding.
	local function url_at(s, i, prev)
		local cp, nx = at(s, i);
		if cp < 0x80 and is_alpha(cp) then
			local j = nx;
			while SCHEME[byte(s, j)] do j = j + 1; end
			if sub(s, j, j + 2) == "://" then
				local rest = j + 3;
				local stop = trim_end(s, rest, delimited_end(s, rest));
				local host = scheme_host(sub(s, rest, stop - 1));
				if host == nil then return "punycode"; end
				return stop, host;
			end
		end
		if prev ~= nil and INSIDE[prev] then return nil; end
		local host_end, labels, chars = host_run(s, i);
		if labels < 2 or chars > MAX_HOST_CHARS then return nil; end
		local host = sub(s, i, host_end - 1);
		if not (tld_ok(host) or (chars <= 15 and dotted_quad(host))) then return nil; end
		local stop = host_end;
		local b = byte(s, stop);
		if b == 64 then return nil; end -- @: an email address
		if b == 58 and (byte(s, stop + 1) or 0) >= 48 and (byte(s, stop + 1) or 0) <= 57 then
			stop = stop + 1;
			while (byte(s, stop) or 0) >= 48 and (byte(s, stop) or 0) <= 57 do stop = stop + 1; end
		end
		b = byte(s, stop);
		if b == 47 or b == 63 or b == 35 then
			stop = math.max(trim_end(s, host_end, delimited_end(s, stop)), stop);
		end
		local shown = display_host(host);
		if shown == nil then return "punycode"; end
		return stop, shown;
	end

	-- Step 3: every URL replaced by its host. A URL starts only where a
	-- run of label and scheme characters starts, and holds a `.` or is
	-- followed by `://`: each run is looked at once, from the `.` or `:`
	-- found in it, so the pass is linear.
	local function urls(s)
		local out, pos, i = {}, 1, 1;
		while true do
			local p = find(s, "[.:]", i);
			if not p then break; end
			-- Back to the start of the run that holds p (or ends before it).
			local r = p;
			while r > i do
				local q = before(s, r);
				local cp = at(s, q);
				if not (is_label(cp) or is_scheme(cp)) then break; end
				r = q;
			end
			-- Forward to its end.
			local stop = p;
			if byte(s, p) == 46 then
				stop = p + 1;
				while true do
					local cp, nx = at(s, stop);
					if not cp or not (is_label(cp) or is_scheme(cp)) then break; end
					stop = nx;
				end
			end
			local prev = r > 1 and at(s, before(s, r)) or nil;
			local boundary = prev == nil or not (is_label(prev) or is_scheme(prev));
			local first = at(s, r);
			local found, host;
			if boundary and r < p and is_label(first) then
				found, host = url_at(s, r, prev);
				if found == "punycode" then return nil; end
			end
			if found then
				out[#out + 1] = sub(s, pos, r - 1);
				out[#out + 1] = host or sub(s, r, found - 1);
				pos, i = found, found;
			else
				i = math.max(stop, p + 1);
			end
		end
		if pos == 1 then return s; end
		out[#out + 1] = sub(s, pos);
		return concat(out);
	end

	local D = {};

	--- Steps 1-6: the normalized body, false when it is too short for a
	-- digest, nil when corvidd must normalize it.
	function D.normalize(body)
		if type(body) ~= "string" or #body > MAX_BODY or not utf8_len(body) then return nil; end
		local s = gsub(body, "[A-Z]", UPPER);
		local ascii = not find(s, "[\128-\255]");
		if not ascii then
			s = gsub(s, NON_ASCII, MAP);
			if find(s, "\0", 1, true) then return nil; end
		end
		if find(s, ".", 1, true) or find(s, "://", 1, true) then
			s = urls(s);
			if not s then return nil; end
		end
		if not ascii then s = gsub(s, NON_ASCII, CLASS); end
		s = gsub(gsub(s, "[0-9]+", "#"), "[\t\n\v\f\r ]+", " ");
		if byte(s, 1) == 32 then s = sub(s, 2); end
		if byte(s, -1) == 32 then s = sub(s, 1, -2); end
		if (ascii and #s or utf8_len(s)) < min_chars then return false; end
		return s;
	end

	--- The body's digest subject (`digest:` and the hex SHA-256), false
	-- when it gets none, nil when corvidd must compute it.
	function D.digest(body)
		local s = D.normalize(body);
		if not s then return s; end
		return "digest:" .. sha256(s, true);
	end

	D.unicode = tables.unicode;
	return D;
end

return M;
