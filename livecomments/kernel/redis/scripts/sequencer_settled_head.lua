-- The settled head of a video (livecomments/kernel/sequencer.py).
-- KEYS[1] seq counter, KEYS[2] epoch, KEYS[3] the outbox. ARGV[1] the video id,
-- ARGV[2] how many seqs below the head to look at. Returns {settled, epoch, head}:
-- settled is one below the lowest of those seqs still in flight (taken, not yet
-- stored and dispatched), the head when none is; {-1, 0, 0} without a counter.
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {-1, 0, 0} end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local settled = head
for s = math.max(1, head - tonumber(ARGV[2]) + 1), head do
  if redis.call('ZSCORE', KEYS[3], ARGV[1] .. '|' .. s) then
    settled = s - 1
    break
  end
end
return {settled, tonumber(epoch), head}
