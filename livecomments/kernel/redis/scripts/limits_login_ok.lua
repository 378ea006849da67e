-- A login succeeded (livecomments/comment_service/limits.py,
-- Limiter.login_succeeded): the pair's failures are forgotten, the account bucket
-- gets the attempt back, and the address is remembered as the owner's (exempt from
-- the account-wide back-off). K: 2, 3 and 6 of limits_login.lua. A: account cap,
-- the mark's lifetime (ms).
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local tokens = tonumber(redis.call('HGET', KEYS[2], 'tokens') or ARGV[1])
  redis.call('HSET', KEYS[2], 'tokens', tostring(math.min(tonumber(ARGV[1]), tokens + 1)))
end
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[2]))
return 1
