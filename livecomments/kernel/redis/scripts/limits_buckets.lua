-- Token buckets (livecomments/comment_service/limits.py, Limiter.take), all or
-- nothing, on Redis' clock so replicas with skewed clocks agree. KEYS are the
-- buckets, ARGV[2i-1], ARGV[2i] their capacity and refill per ms. Returns {0, 0}
-- when a token was taken from every bucket, else {index of the emptiest bucket,
-- ms until it has a token}; nothing is taken then.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local levels = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then tokens, ts = cap, now end
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  if tokens < 1 then
    local w = math.ceil((1 - tokens) / rate)
    if w > wait then worst, wait = i, w end
  end
end
if worst > 0 then return {worst, wait} end
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i] - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate) + 1000)
end
return {0, 0}
