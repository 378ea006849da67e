-- A decimal string (an id or a seq) zero-padded to 20 digits, so the reply index
-- sorts by parent, then by seq (ids are strings: no float rounding). The same
-- format as reply_member() in livecomments/kernel/redis/keys.py.
local function pad(s) s = tostring(s); return string.rep('0', 20 - #s) .. s end
