-- Lease the overdue outbox entries (livecomments/comment_service/outbox.py): they
-- are re-scored to now, so the other replicas skip them for a while.
-- KEYS[1] the outbox. ARGV: entries older than this (ms), how many, lease (ms).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
                       'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]) - tonumber(ARGV[1]), member)
end
return due
