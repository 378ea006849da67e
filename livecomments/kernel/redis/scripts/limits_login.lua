-- Login attempts (livecomments/comment_service/limits.py, Limiter.login_attempt).
-- K: 1 the address's attempt bucket, 2 the (account, address) failure bucket,
-- 3 the account's failure bucket (every address), 4 the account's back-off gate,
-- 5 its back-off level, 6 the "this address logged in to this account before"
-- mark. A: the three buckets' cap and rate, then the back-off's first and longest
-- delay (ms). Every admitted attempt is counted as a failure at once (a success
-- gives it back), so concurrent guesses cannot slip past the lock while the
-- password hash is being checked. Returns verdict, ms: ok, locked (this pair),
-- backoff (the account, from an address never used for it), rate_ip.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function level(key, cap, rate)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then tokens, ts = cap, now end
  return math.min(cap, tokens + math.max(0, now - ts) * rate)
end
local function store(key, tokens, cap, rate)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(cap / rate) + 1000)
end
local cap, rate = {}, {}
for i = 1, 3 do cap[i], rate[i] = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]) end
local ip = level(KEYS[1], cap[1], rate[1])
local pair = level(KEYS[2], cap[2], rate[2])
local account = level(KEYS[3], cap[3], rate[3])
if pair < 1 then return {'locked', math.ceil((1 - pair) / rate[2])} end
local known = redis.call('EXISTS', KEYS[6]) == 1
if not known then
  local gate = redis.call('PTTL', KEYS[4])
  if gate > 0 then return {'backoff', gate} end
end
if ip < 1 then return {'rate_ip', math.ceil((1 - ip) / rate[1])} end
store(KEYS[1], ip - 1, cap[1], rate[1])
store(KEYS[2], pair - 1, cap[2], rate[2])
if account >= 1 then
  store(KEYS[3], account - 1, cap[3], rate[3])
elseif not known then
  -- Over the account-wide threshold: each attempt from an unknown address
  -- doubles the wait before the next one may start, up to the longest delay.
  local n = redis.call('INCR', KEYS[5])
  redis.call('PEXPIRE', KEYS[5], math.ceil(cap[3] / rate[3]))
  local delay = math.min(tonumber(ARGV[8]), tonumber(ARGV[7]) * 2 ^ math.min(n - 1, 30))
  redis.call('SET', KEYS[4], '1', 'PX', math.max(1, math.floor(delay)))
end
return {'ok', 0}
