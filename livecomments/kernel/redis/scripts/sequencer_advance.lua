-- Move a video's counter past a seq (livecomments/kernel/sequencer.py). KEYS[1]
-- seq counter. ARGV[1] a seq known to be taken: never hand it (or anything below
-- it) out again.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
