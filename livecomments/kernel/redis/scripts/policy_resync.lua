-- Reload the copy of every video's settings (livecomments/comment_service/policy.py).
-- KEYS[1] the index (a set of videos with settings), KEYS[2] the settings-loaded
-- marker. ARGV[1] the key prefix of settings hashes (Keys.video_settings('')),
-- ARGV[2] the reload's start (ms), ARGV[3] the marker's lifetime (ms), then per
-- video: its id, slow mode, hold, min_age (the hash's fields, '' when absent). Entries written after the reload began (a moderator's change
-- racing it) are left alone.
local prefix, started = ARGV[1], tonumber(ARGV[2])
local wanted = {}
for i = 4, #ARGV, 4 do wanted[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]} end
local function stale(key)
  local at = tonumber(redis.call('HGET', key, 'at') or '0')
  return at < started
end
for _, video in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = prefix .. video
  if wanted[video] == nil and stale(key) then
    redis.call('DEL', key)
    redis.call('SREM', KEYS[1], video)
  end
end
local FIELDS = {'slow_mode', 'hold', 'min_age'}
for video, values in pairs(wanted) do
  local key = prefix .. video
  if stale(key) then
    redis.call('DEL', key)
    for f = 1, 3 do
      if values[f] ~= '' then redis.call('HSET', key, FIELDS[f], values[f]) end
    end
    redis.call('HSET', key, 'at', started)
    redis.call('SADD', KEYS[1], video)
  end
end
redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[3]))
return 1
