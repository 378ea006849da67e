-- The next seq of a video, as a Lua function so that other scripts (the comment
-- service's batched admission) can take a seq in the same step. Arguments: the seq
-- counter key, the epoch key, the outbox key (or false) and the video id. Returns
-- seq, epoch, or -1, 0 when the counter has to be (re)seeded first. The outbox
-- entry (the outbox member, see livecomments/kernel/redis/keys.py) is made in the
-- same step as the seq: whatever happens to the writer afterwards, a seq that
-- reaches the store is also in the outbox until it has been dispatched (see
-- livecomments/comment_service/outbox.py).
local function next_seq(seq_key, epoch_key, outbox_key, video)
  local epoch = redis.call('GET', epoch_key)
  if not epoch then return -1, 0 end
  local seq = redis.call('INCR', seq_key)
  if outbox_key then
    local t = redis.call('TIME')
    redis.call('ZADD', outbox_key, t[1] * 1000 + math.floor(t[2] / 1000), video .. '|' .. seq)
  end
  return seq, tonumber(epoch)
end
