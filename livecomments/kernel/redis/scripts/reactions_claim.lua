-- Claim dirty videos for a push (livecomments/comment_service/reactions.py): a
-- video can be claimed once per push interval, whichever replica gets it.
-- KEYS: 1 dirty videos. ARGV: key prefix, push interval ms, most videos per claim.
-- Returns {{video, {comment, {name, count, ...}}, ...}, ...} for the claimed videos.
-- The per-video and per-comment keys are built here from the prefix, as
-- livecomments/kernel/redis/keys.py builds them (Keys.reaction_last,
-- Keys.reaction_dirty, Keys.reaction_counts; tests/unit checks the families).
local out = {}
for _, video in ipairs(redis.call('SRANDMEMBER', KEYS[1], ARGV[3])) do
  if redis.call('SET', ARGV[1] .. 'rx:last:' .. video, '1', 'NX', 'PX', ARGV[2]) then
    local dirty = ARGV[1] .. 'rx:dirty:' .. video
    local entry = {video}
    for _, cid in ipairs(redis.call('SMEMBERS', dirty)) do
      table.insert(entry, cid)
      table.insert(entry, redis.call('HGETALL', ARGV[1] .. 'rx:c:' .. cid))
    end
    redis.call('DEL', dirty)
    redis.call('SREM', KEYS[1], video)
    table.insert(out, entry)
  end
end
return out
