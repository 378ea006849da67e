-- The next seq of a video (livecomments/kernel/sequencer.py, Sequencer.next).
-- KEYS[1] seq counter, KEYS[2] epoch, KEYS[3] the outbox (or none). ARGV[1] the video id.
-- include: lib_next_seq
local seq, epoch = next_seq(KEYS[1], KEYS[2], KEYS[3] or false, ARGV[1])
return {seq, epoch}
