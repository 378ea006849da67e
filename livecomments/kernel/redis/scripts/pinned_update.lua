-- The cached pinned comment of a video (livecomments/comment_service/pinned.py):
-- replace it with a newer revision of the same comment (an edit), and nothing
-- else: not a pin that changed meanwhile, not "none", not an older revision.
-- KEYS[1] the video's pinned key. ARGV[1] the comment's id, ARGV[2] its rev,
-- ARGV[3] its JSON. Returns 1 if it replaced the entry, else 0.
local cur = redis.call('GET', KEYS[1])
if not cur or cur == 'none' then return 0 end
local ok, old = pcall(cjson.decode, cur)
if not ok or type(old) ~= 'table' or old.id ~= ARGV[1] then return 0 end
if (tonumber(old.rev) or 0) >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
return 1
