-- Record the outcome of a keyed post (livecomments/comment_service/idempotency.py).
-- KEYS[1] the record. ARGV[1] the id the caller claimed, ARGV[2] done/failed,
-- ARGV[3] the status answered. Only the claimant's record is changed.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'status', ARGV[3])
return 1
