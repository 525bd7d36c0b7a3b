-- Content digests of message bodies (spec §10) computed in Prosody, so
-- that a stranger's message waits for no round trip to corvidd.
--
-- Lua has no Unicode tables, so corvidd lends its own (GET
-- /v1/digest/tables, from the same Unicode version it digests with): for
-- each non-ASCII character, what steps 1-2 (NFKC, case fold, NFKC) make of
-- it when that does not depend on its neighbours, and its classes
-- (label, Alphabetic, numeric, White_Space); and for the characters
-- whose normalization depends on their neighbours (combining marks,
-- conjoining jamo: about 1,300 code points), the decompositions,
-- combining classes, compositions and case foldings with which the text
-- around them is normalized by the whole algorithm (UAX #15). A body over
-- 16 KiB, or with more than 30 combining marks in a row (Unicode's
-- stream-safe limit), is not digested here: `digest` answers nil and the
-- caller asks corvidd.
-- Everything else follows spec/corvid.md §10 and §10.1 step by step; the
-- test suite checks this file against spec/test-vectors/digests.json and
-- against corvid-protocol on random texts (hooks/prosody/test/digest.lua).

local M = {};

local byte, sub, find, gsub = string.byte, string.sub, string.find, string.gsub;
local concat = table.concat;
local utf8_char, utf8_codepoint, utf8_len = utf8.char, utf8.codepoint, utf8.len;

-- One non-ASCII character of valid UTF-8 (Prosody delivers only that).
local NON_ASCII = "[\194-\244][\128-\191]*";

local punycode_decode; -- below

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

-- The code point at byte `i` of valid UTF-8 and the byte after it.
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

local function in_set(blocks, cp)
	local b = blocks[cp >> 8];
	return b == true or (b ~= nil and b[cp] == true);
end

-- Punycode (RFC 3492) decoding of a label's text after `xn--`, as the
-- `idna` crate's `punycode::decode_to_string` does it (every quantity a
-- 32-bit unsigned integer that must not overflow); nil when it does not
-- decode.
local P_BASE, T_MIN, T_MAX, SKEW, DAMP = 36, 1, 26, 38, 700;
local U32 = 0xFFFFFFFF;
local function adapt(delta, points, first)
	delta = delta // (first and DAMP or 2);
	delta = delta + delta // points;
	local k = 0;
	while delta > ((P_BASE - T_MIN) * T_MAX) // 2 do
		delta = delta // (P_BASE - T_MIN);
		k = k + P_BASE;
	end
	return k + ((P_BASE - T_MIN + 1) * delta) // (delta + SKEW);
end
function punycode_decode(input)
	local last = input:match("^.*()%-");
	local base, rest = "", input;
	if last then
		base = sub(input, 1, last - 1);
		if last > 1 then rest = sub(input, last + 1); end
	end
	if find(base, "[\128-\255]") then return nil; end
	local out = {};
	for i = 1, #base do out[i] = byte(base, i); end
	local length = #base;
	local n, bias, i = 0x80, 72, 0;
	local pos, len = 1, #rest;
	while pos <= len do
		local previous_i, weight, k = i, 1, P_BASE;
		while true do
			local b = byte(rest, pos);
			if not b then return nil; end
			pos = pos + 1;
			local digit;
			if b >= 48 and b <= 57 then digit = b - 22;
			elseif b >= 65 and b <= 90 then digit = b - 65;
			elseif b >= 97 and b <= 122 then digit = b - 97;
			else return nil; end
			local product = digit * weight;
			if product > U32 then return nil; end
			i = i + product;
			if i > U32 then return nil; end
			local t = k <= bias and T_MIN or (k >= bias + T_MAX and T_MAX or k - bias);
			if digit < t then break; end
			weight = weight * (P_BASE - t);
			if weight > U32 then return nil; end
			k = k + P_BASE;
		end
		bias = adapt(i - previous_i, length + 1, previous_i == 0);
		n = n + i // (length + 1);
		if n > U32 then return nil; end
		i = i % (length + 1);
		if n > 0x10FFFF or (n >= 0xD800 and n <= 0xDFFF) then return nil; end
		table.insert(out, i + 1, n);
		length = length + 1;
		i = i + 1;
	end
	return utf8_char(table.unpack(out, 1, length));
end

--- A digester from the tables corvidd serves (decoded JSON) and a SHA-256
-- function (binary string -> binary string or hex, as `hex` asks).
-- Returns nil and an error when the tables are not usable. Building it
-- takes tens of milliseconds: `pause`, when given (coroutine.yield, for
-- one), is called between its steps (each under 10 ms) so that a caller
-- can let its event loop run.
function M.new(tables, sha256, pause)
	pause = pause or function () end;
	if type(tables) ~= "table" or tables.version ~= 2 then
		return nil, "unknown digest tables";
	end
	for _, name in ipairs({ "map", "context", "label", "alphabetic", "numeric", "space", "decompose", "combining_class", "compose", "case_fold" }) do
		if type(tables[name]) ~= "string" then return nil, "no table " .. name; end
	end
	local min_chars = math.tointeger(tables.min_chars) or 24;
	local function cp_list(text)
		local t = {};
		for x in text:gmatch("%x+") do
			local cp = tonumber(x, 16);
			if cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil; end
			t[#t + 1] = cp;
		end
		return t;
	end
	-- `first-last[:value];` entries: calls f(first, last, value) for each;
	-- false when one is malformed or the ranges hold too many code points.
	local function each_range(text, f)
		local total = 0;
		local count = 0;
		for lo, hi, value in text:gmatch("(%x+)%-(%x+):?(%x*);") do
			lo, hi = tonumber(lo, 16), tonumber(hi, 16);
			if lo > hi or hi > 0x10FFFF then return false; end
			count = count + 1;
			if count % 100 == 0 then pause(); end
			total = total + hi - lo + 1;
			if total > 0x110000 then return false; end
			f(lo, hi, tonumber(value, 16));
		end
		return true;
	end
	-- `key:sequence;` entries: calls f(key, code points) for each (and
	-- pauses every 500).
	local function each_entry(text, f)
		local count = 0;
		for key, seq in text:gmatch("(%x+):([%x ]+);") do
			count = count + 1;
			if count % 500 == 0 then pause(); end
			local cps = cp_list(seq);
			local k = tonumber(key, 16);
			if not cps or k > 0x10FFFF or (k >= 0xD800 and k <= 0xDFFF) then return false; end
			f(k, cps);
		end
		return true;
	end

	-- Steps 1-2 per character; "\0" (never in XML text) marks one that
	-- needs its neighbours.
	local MAP, CONTEXT, MARK = {}, {}, {};
	local ok = each_entry(tables.map, function (c, cps)
		MAP[utf8_char(c)] = utf8_char(table.unpack(cps));
	end);
	pause();
	ok = ok and each_range(tables.context, function (lo, hi)
		for cp = lo, hi do
			if cp < 0xD800 or cp > 0xDFFF then
				local ch = utf8_char(cp);
				MAP[ch] = "\0";
				MARK[ch] = "\0" .. ch;
				CONTEXT[cp] = true;
			end
		end
	end);
	-- The whole algorithm, for the text around characters that need it.
	local DECOMPOSE, CCC, COMPOSE, FOLD = {}, {}, {}, {};
	pause();
	ok = ok and each_entry(tables.decompose, function (c, cps) DECOMPOSE[c] = cps; end);
	pause();
	ok = ok and each_entry(tables.case_fold, function (c, cps) FOLD[c] = cps; end)
		and each_range(tables.combining_class, function (lo, hi, k)
			for cp = lo, hi do CCC[cp] = k; end
		end);
	if not ok then return nil, "malformed digest tables"; end
	for a, b, c in tables.compose:gmatch("(%x+) (%x+):(%x+);") do
		a, b, c = tonumber(a, 16), tonumber(b, 16), tonumber(c, 16);
		local t = COMPOSE[a];
		if not t then t = {}; COMPOSE[a] = t; end
		t[b] = c;
	end
	if not next(DECOMPOSE) or not next(COMPOSE) or not next(CONTEXT) then
		return nil, "tables without the whole algorithm";
	end

	-- Hangul syllables (Unicode chapter 3.12).
	local S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7;
	local L_COUNT, V_COUNT, T_COUNT = 19, 21, 28;
	local N_COUNT, S_COUNT = V_COUNT * T_COUNT, 19 * 21 * 28;
	local MAX_NON_STARTERS = 30;

	-- NFKC of the code points `cps[1..n]`, into a new array; nil when a
	-- run of non-starters is longer than the stream-safe limit.
	local function nfkc_cps(cps, n)
		local d, m = {}, 0;
		for i = 1, n do
			local c = cps[i];
			local s_index = c - S_BASE;
			if s_index >= 0 and s_index < S_COUNT then
				m = m + 1; d[m] = L_BASE + s_index // N_COUNT;
				m = m + 1; d[m] = V_BASE + (s_index % N_COUNT) // T_COUNT;
				local t = s_index % T_COUNT;
				if t ~= 0 then m = m + 1; d[m] = T_BASE + t; end
			else
				local x = DECOMPOSE[c];
				if x then
					for j = 1, #x do m = m + 1; d[m] = x[j]; end
				else
					m = m + 1; d[m] = c;
				end
			end
		end
		-- Canonical ordering: each run of non-starters sorted by class,
		-- stably (insertion sort; runs are at most MAX_NON_STARTERS long).
		local run = 0;
		for i = 1, m do
			local c = d[i];
			local k = CCC[c];
			if k then
				run = run + 1;
				if run > MAX_NON_STARTERS then return nil; end
				local j = i - 1;
				while j >= 1 and (CCC[d[j]] or 0) > k do
					d[j + 1] = d[j];
					j = j - 1;
				end
				d[j + 1] = c;
			else
				run = 0;
			end
		end
		if m == 0 then return d, 0; end
		-- Canonical composition.
		local starter_pos, starter = 1, d[1];
		local last_class = CCC[starter] and 256 or 0;
		local out = 1;
		for i = 2, m do
			local c = d[i];
			local k = CCC[c] or 0;
			local composite;
			local l_index, v_index = starter - L_BASE, c - V_BASE;
			if l_index >= 0 and l_index < L_COUNT and v_index >= 0 and v_index < V_COUNT then
				composite = S_BASE + (l_index * V_COUNT + v_index) * T_COUNT;
			else
				local s_index, t_index = starter - S_BASE, c - T_BASE;
				if s_index >= 0 and s_index < S_COUNT and s_index % T_COUNT == 0 and t_index > 0 and t_index < T_COUNT then
					composite = starter + t_index;
				else
					local t = COMPOSE[starter];
					composite = t and t[c];
				end
			end
			if composite and (last_class < k or last_class == 0) then
				d[starter_pos] = composite;
				starter = composite;
			else
				if k == 0 then
					starter_pos, starter = out + 1, c;
				end
				last_class = k;
				out = out + 1;
				d[out] = c;
			end
		end
		for i = out + 1, m do d[i] = nil; end
		return d, out;
	end

	-- Steps 1-2 on a piece of text (code points), as UTF-8; nil as above.
	local function fold_cps(cps, n)
		local a, an = nfkc_cps(cps, n);
		if not a then return nil; end
		local f, fn = {}, 0;
		for i = 1, an do
			local x = FOLD[a[i]];
			if x then
				for j = 1, #x do fn = fn + 1; f[fn] = x[j]; end
			else
				fn = fn + 1; f[fn] = a[i];
			end
		end
		local b, bn = nfkc_cps(f, fn);
		if not b then return nil; end
		return utf8_char(table.unpack(b, 1, bn));
	end

	-- Steps 1-2 on a text that holds characters needing their neighbours.
	-- Nothing composes or reorders across the start of a context-free
	-- character, so the text is cut there: each run of characters that
	-- need their neighbours, with the character before it, is normalized
	-- by the whole algorithm, and the rest is mapped character by
	-- character. The runs are found by marking their characters with a
	-- NUL byte (never in XML text).
	local function fold_slow(s)
		local marked = gsub(s, NON_ASCII, MARK);
		local out, on = {}, 0;
		local pos, n = 1, #marked;
		while pos <= n do
			local z = find(marked, "\0", pos, true);
			if not z then
				on = on + 1; out[on] = gsub(sub(marked, pos), NON_ASCII, MAP);
				break;
			end
			-- The character before the run, if it is after `pos`.
			local start = z;
			if z > pos then
				start = before(marked, z);
				if start > pos then
					on = on + 1; out[on] = gsub(sub(marked, pos, start - 1), NON_ASCII, MAP);
				end
			end
			local cps, m = {}, 0;
			if start < z then
				m = 1; cps[1] = utf8_codepoint(marked, start);
			end
			local q = z;
			while byte(marked, q) == 0 do
				m = m + 1; cps[m], q = at(marked, q + 1);
				-- A long run is a long run of marks: over the limit anyway.
				if m > 4 * MAX_NON_STARTERS then return nil; end
			end
			local text = fold_cps(cps, m);
			if not text then return nil; end
			on = on + 1; out[on] = text;
			pos = q;
		end
		return concat(out);
	end

	-- A set of code points from ranges, by blocks of 256: true for a
	-- whole block, else a table of members.
	local function block_set(text)
		local blocks = {};
		local fine = each_range(text, function (lo, hi)
			local cp = lo;
			while cp <= hi do
				local b = cp >> 8;
				local block_end = (b << 8) + 255;
				if cp == b << 8 and hi >= block_end then
					blocks[b] = true;
				elseif blocks[b] ~= true then
					local t = blocks[b] or {};
					blocks[b] = t;
					for x = cp, math.min(hi, block_end) do t[x] = true; end
				end
				cp = math.min(hi, block_end) + 1;
			end
		end);
		return fine and blocks or nil;
	end
	pause();
	local LABEL = block_set(tables.label);
	pause();
	local ALPHA = block_set(tables.alphabetic);
	local SPACE = block_set(tables.space);
	if not LABEL or not ALPHA or not SPACE then return nil, "malformed digest tables"; end
	-- Step 4-5 per character: numeric ones become "0", white space " ".
	local CLASS = {};
	ok = each_range(tables.numeric, function (lo, hi)
		for cp = lo, hi do CLASS[utf8_char(cp)] = "0"; end
	end) and each_range(tables.space, function (lo, hi)
		for cp = lo, hi do CLASS[utf8_char(cp)] = " "; end
	end);
	if not ok then return nil, "malformed digest tables"; end
	-- The first bytes of those characters: a text without any needs no
	-- pass over it (Cyrillic, CJK and Latin letters have none).
	local lead_set, leads = {}, {};
	for ch in pairs(CLASS) do lead_set[byte(ch, 1)] = true; end
	for b in pairs(lead_set) do leads[#leads + 1] = string.char(b); end
	table.sort(leads);
	local CLASS_LEADS = "[" .. table.concat(leads) .. "]";

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

	-- A host as the digest shows it: `xn--` labels of at most 63 bytes
	-- that decode as Punycode decoded, one leading `www.` dropped.
	local function display_host(host)
		if find("." .. host, ".xn--", 1, true) then
			local labels = {};
			for label in (host .. "."):gmatch("([^.]*)%.") do
				if sub(label, 1, 4) == "xn--" and #label <= 63 then
					label = punycode_decode(sub(label, 5)) or label;
				end
				labels[#labels + 1] = label;
			end
			host = concat(labels, ".");
		end
		if sub(host, 1, 4) == "www." and #host > 4 then return sub(host, 5); end
		return host;
	end

	-- The host of a scheme URL's text after `//`: false when it has none.
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
	-- there.
	local function url_at(s, i, prev)
		local cp, nx = at(s, i);
		if cp < 0x80 and is_alpha(cp) then
			local j = nx;
			while SCHEME[byte(s, j)] do j = j + 1; end
			if sub(s, j, j + 2) == "://" then
				local rest = j + 3;
				local stop = trim_end(s, rest, delimited_end(s, rest));
				return stop, scheme_host(sub(s, rest, stop - 1));
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
		return stop, display_host(host);
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
		-- (Each pass runs only where it changes something: a new string is
		-- work for Prosody's garbage collector.)
		local s = body;
		if find(s, "[A-Z]") then s = gsub(s, "[A-Z]", UPPER); end
		local ascii = not find(s, "[\128-\255]");
		if not ascii then
			local mapped = gsub(s, NON_ASCII, MAP);
			if find(mapped, "\0", 1, true) then
				mapped = fold_slow(s);
				if not mapped then return nil; end
			end
			s = mapped;
		end
		if find(s, ".", 1, true) or find(s, "://", 1, true) then
			s = urls(s);
			-- (A decoded host may bring the first non-ASCII characters.)
			ascii = ascii and not find(s, "[\128-\255]");
		end
		if not ascii and find(s, CLASS_LEADS) then s = gsub(s, NON_ASCII, CLASS); end
		if find(s, "[0-9]") then s = gsub(s, "[0-9]+", "#"); end
		if find(s, "[\t\n\v\f\r]") or find(s, "  ", 1, true) then s = gsub(s, "[\t\n\v\f\r ]+", " "); end
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

	--- As `digest`, with the first 64 bits of the digest as a signed
	-- integer (as mod_corvid keeps digest subjects) in place of the subject.
	function D.digest_int(body)
		local s = D.normalize(body);
		if not s then return s; end
		return (string.unpack(">i8", sha256(s)));
	end

	D.unicode = tables.unicode;
	return D;
end

return M;
