-- An RTMS node's viewer counts (livecomments/kernel/viewers.py): write its own field
-- of each video's viewers hash where it changed, and read every field back.
-- KEYS[i] the viewers hash of a video. ARGV[1] the node's id, ARGV[2] how long (ms) a
-- hash lives after its last write; ARGV[2 + i] what to do with KEYS[i]: '' only read
-- it, '-' remove the node's field, else write it as the node's field ('<boot> <count>').
-- Returns per key its fields and values after the write (HGETALL), {} after a removal.
local node, ttl = ARGV[1], ARGV[2]
local out = {}
for i, key in ipairs(KEYS) do
  local value = ARGV[2 + i]
  if value == '-' then
    redis.call('HDEL', key, node)
    out[i] = {}
  else
    if value ~= '' then
      redis.call('HSET', key, node, value)
      redis.call('PEXPIRE', key, ttl)
    end
    out[i] = redis.call('HGETALL', key)
  end
end
return out
