-- One click on a reaction (livecomments/comment_service/reactions.py): the user
-- joins the comment's set for that reaction (so each user counts once per comment
-- per reaction) and, if that changed anything, the count moves and the comment is
-- marked dirty.
-- KEYS: 1 users who reacted with this name, 2 counts hash, 3 dirty comments of
-- the video, 4 dirty videos, 5 comments to flush (members "{video}|{comment}").
-- ARGV: user id, name, +1/-1, comment id, video id, ttl, then seed pairs (name, count).
if redis.call('EXISTS', KEYS[2]) == 0 and #ARGV > 6 then
  for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
local changed
if ARGV[3] == '1' then
  changed = redis.call('SADD', KEYS[1], ARGV[1])
  if changed == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end
else
  changed = redis.call('SREM', KEYS[1], ARGV[1])
  if changed == 1 and redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if changed == 1 then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('SADD', KEYS[4], ARGV[5])
  redis.call('SADD', KEYS[5], ARGV[5] .. '|' .. ARGV[4])
end
return {changed, redis.call('HGETALL', KEYS[2])}
