-- Claim an idempotency key (livecomments/comment_service/idempotency.py).
-- KEYS[1] the record (a hash), KEYS[2] the token's logout mark. ARGV[1] the id
-- for a new comment, ARGV[2] the request's fingerprint, ARGV[3] the window (ms),
-- ARGV[4] IN_FLIGHT (ms). Returns {state, id, extra}: new, done (extra: status),
-- in_flight (extra: ms left), resume (a failed or abandoned attempt's id),
-- reused, revoked.
if redis.call('EXISTS', KEYS[2]) == 1 then return {'revoked', '0', 0} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local r = redis.call('HMGET', KEYS[1], 'id', 'fp', 'state', 'at', 'status')
if not r[1] then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'fp', ARGV[2], 'state', 'pending', 'at', now)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {'new', ARGV[1], 0}
end
if r[2] ~= ARGV[2] then return {'reused', r[1], 0} end
if r[3] == 'done' then return {'done', r[1], tonumber(r[5])} end
local age = now - tonumber(r[4])
if r[3] == 'pending' and age < tonumber(ARGV[4]) then
  return {'in_flight', r[1], tonumber(ARGV[4]) - age}
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'at', now)
return {'resume', r[1], 0}
