-- Admission of a post, as a Lua function (admission_admit_many.lua runs it for
-- every post of a batch in one call; livecomments/comment_service/limits.py builds
-- its keys and arguments, livecomments/comment_service/admission.py makes the call).
-- K: 1 global ban, 2 video ban, 3 bans-loaded marker, 4 video settings (a hash,
-- only for videos with settings), 5 user bucket, 6 ip bucket, 7 slow-mode mark,
-- 8 duplicate mark, 9 the token's logout mark, 10 settings-loaded marker, 11 the
-- user's unacknowledged warning (loaded with the bans). A: user
-- cap, user rate, ip cap, ip rate, duplicate window ms, exempt (1/0), the content
-- filter's score of the text in thousandths (-1: none), the account's creation
-- time in ms (0: not known). Returns verdict, ms: ok, held (admitted, but the
-- video's hold threshold holds it for review), load_bans, load_settings,
-- load_account (the video wants an account age the caller did not send),
-- revoked, banned_global, banned_video, warned, too_new (ms until the account is
-- old enough), slow_mode, duplicate, rate_user, rate_ip. Nothing is written
-- unless the verdict is ok or held.
--
-- The video settings hash (only for videos whose settings differ from the
-- defaults): slow_mode (s), hold (thousandths; absent: the service's own
-- threshold), min_age (ms), at.
--
-- How many keys and arguments admit() takes (limits.ADMIT_KEYS and
-- limits.ADMIT_ARGS say the same; tests/unit checks that they agree).
local ADMIT_KEYS, ADMIT_ARGS = 11, 8
local function admit(K, A)
  if redis.call('EXISTS', K[9]) == 1 then return 'revoked', 0 end
  if redis.call('EXISTS', K[3]) == 0 then return 'load_bans', 0 end
  local ban = redis.call('PTTL', K[1])
  if ban ~= -2 then return 'banned_global', ban end
  ban = redis.call('PTTL', K[2])
  if ban ~= -2 then return 'banned_video', ban end
  if redis.call('EXISTS', K[11]) == 1 then return 'warned', 0 end
  if redis.call('EXISTS', K[10]) == 0 then return 'load_settings', 0 end
  local exempt = A[6] == '1'
  local v = redis.call('HMGET', K[4], 'slow_mode', 'hold', 'min_age')
  local slow = tonumber(v[1] or '0') or 0
  local hold, min_age = tonumber(v[2] or ''), tonumber(v[3] or '0') or 0
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local held = false
  if not exempt then
    if min_age > 0 then
      local created = tonumber(A[8]) or 0
      if created <= 0 then return 'load_account', 0 end
      if now - created < min_age then return 'too_new', min_age - (now - created) end
    end
    if slow > 0 then
      local left = redis.call('PTTL', K[7])
      if left > 0 then return 'slow_mode', left end
    end
    local dup = redis.call('PTTL', K[8])
    if dup > 0 then return 'duplicate', dup end
    local score = tonumber(A[7]) or -1
    held = hold ~= nil and score >= 0 and score >= hold
  end
  local levels = {}
  for i = 5, 6 do
    local cap, rate = tonumber(A[(i - 5) * 2 + 1]), tonumber(A[(i - 5) * 2 + 2])
    local v = redis.call('HMGET', K[i], 'tokens', 'ts')
    local tokens, ts = tonumber(v[1]), tonumber(v[2])
    if tokens == nil or ts == nil then tokens, ts = cap, now end
    tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
    if tokens < 1 then
      return (i == 5 and 'rate_user' or 'rate_ip'), math.ceil((1 - tokens) / rate)
    end
    levels[i] = tokens
  end
  for i = 5, 6 do
    local cap, rate = tonumber(A[(i - 5) * 2 + 1]), tonumber(A[(i - 5) * 2 + 2])
    redis.call('HSET', K[i], 'tokens', tostring(levels[i] - 1), 'ts', tostring(now))
    redis.call('PEXPIRE', K[i], math.ceil(cap / rate) + 1000)
  end
  if not exempt then
    if slow > 0 then redis.call('SET', K[7], '1', 'PX', slow * 1000) end
    if tonumber(A[5]) > 0 then redis.call('SET', K[8], '1', 'PX', A[5]) end
  end
  if held then return 'held', 0 end
  return 'ok', 0
end
