-- (Re)create a video's counter (livecomments/kernel/sequencer.py). KEYS[1] seq
-- counter, KEYS[2] epoch. ARGV[1] the store's highest seq, ARGV[2] the new epoch.
-- Only the first seeder wins.
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
