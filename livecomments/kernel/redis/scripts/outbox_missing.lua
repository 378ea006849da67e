-- Note outbox entries whose seq is missing from the store
-- (livecomments/comment_service/outbox.py).
-- KEYS[1] the seqs found missing (member -> first time seen missing, ms). ARGV:
-- the outbox members found missing now. Returns, per member, how long (ms) it
-- has been missing. Sightings older than an hour are forgotten (the writer
-- stored or settled them meanwhile, or they were fenced).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
local out = {}
for i = 1, #ARGV do
  local first = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not first then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    first = now
  end
  out[i] = now - tonumber(first)
end
return out
