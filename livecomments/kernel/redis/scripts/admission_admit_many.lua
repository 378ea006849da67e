-- Admission of a batch of posts (livecomments/comment_service/admission.py): for
-- each post, in arrival order, admit() and, when the post is admitted and will be
-- published, next_seq() in the same step.
-- KEYS[1] the outbox (or an empty string), then NKEYS per post: admit()'s
-- ADMIT_KEYS, then the video's seq counter and epoch. ARGV[1] the number of posts,
-- then NARGS per post: admit()'s ADMIT_ARGS, then "sequence it" (1/0) and the
-- video id. Returns verdict, ms, seq, epoch per post, flat; seq is 0 when not
-- asked for and -1 when the counter needs seeding first.
-- include: lib_admit lib_next_seq
local NKEYS, NARGS = ADMIT_KEYS + 2, ADMIT_ARGS + 2
local outbox = KEYS[1] ~= '' and KEYS[1] or false
local out = {}
for p = 0, tonumber(ARGV[1]) - 1 do
  local k, a = 1 + p * NKEYS, 1 + p * NARGS
  local K = {unpack(KEYS, k + 1, k + NKEYS)}
  local A = {unpack(ARGV, a + 1, a + NARGS)}
  local verdict, ms = admit(K, A)
  local seq, epoch = 0, 0
  if verdict == 'ok' and A[ADMIT_ARGS + 1] == '1' then
    seq, epoch = next_seq(K[ADMIT_KEYS + 1], K[ADMIT_KEYS + 2], outbox, A[ADMIT_ARGS + 2])
  end
  out[p * 4 + 1] = verdict
  out[p * 4 + 2] = ms
  out[p * 4 + 3] = seq
  out[p * 4 + 4] = epoch
end
return out
