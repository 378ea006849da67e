-- What the cache knows about a history page (livecomments/comment_service/recent.py,
-- RecentCache.window).
-- KEYS: 1 cache, 2 seq counter, 3 epoch, 4 outbox (or ''), 5 reply index. ARGV:
-- 1 'after' or 'before', 2 the cursor (before: the first seq not wanted; 0 =
-- above the head), 3 limit, 4 video id, 5 replies previewed per comment.
-- Returns {head, lo, hi, first in-flight seq (0: none), missing seqs not in
-- flight, entries of lo..hi (JSON, seq, ...), previews, epoch}; head is -1 when the
-- video has no counter in Redis. Each preview is {seq of a top-level comment in
-- lo..hi, its cached reply count, the JSON of its first replies...}.
--
-- Everything here is bounded by the limit: the range read (hi - lo < limit),
-- the holes loop, and per top-level comment one count and ARGV[5] lookups.
-- include: lib_pad
local epoch = redis.call('GET', KEYS[3])
if not epoch then return {-1, 0, 0, 0, 0, {}, {}, 0} end
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor, limit, preview = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local lo, hi
if ARGV[1] == 'after' then
  lo, hi = cursor + 1, math.min(cursor + limit, head)
else
  if cursor == 0 or cursor > head + 1 then cursor = head + 1 end
  lo, hi = math.max(1, cursor - limit), cursor - 1
end
local rows = {}
if hi >= lo then rows = redis.call('ZRANGEBYSCORE', KEYS[1], lo, hi, 'WITHSCORES') end
local have = {}
for i = 2, #rows, 2 do have[tonumber(rows[i])] = true end
local busy, holes = 0, 0
for s = lo, hi do
  if not have[s] then
    if KEYS[4] ~= '' and redis.call('ZSCORE', KEYS[4], ARGV[4] .. '|' .. s) then
      if busy == 0 then busy = s end
    else
      holes = holes + 1
    end
  end
end
local previews = {}
if holes == 0 then
  for i = 1, #rows, 2 do
    local ok, c = pcall(cjson.decode, rows[i])
    if ok and type(c) == 'table' and type(c.id) == 'string' and c.parent_id == cjson.null then
      local from, to = '[' .. pad(c.id) .. '|', '(' .. pad(c.id) .. '}'
      local first = redis.call('ZRANGEBYLEX', KEYS[5], from, to, 'LIMIT', 0, preview)
      if first[1] then
        local out = {rows[i + 1], redis.call('ZLEXCOUNT', KEYS[5], from, to)}
        for _, m in ipairs(first) do
          local s = string.sub(m, 22)
          local r = redis.call('ZRANGEBYSCORE', KEYS[1], s, s)
          if r[1] then out[#out + 1] = r[1] end
        end
        previews[#previews + 1] = out
      end
    end
  end
end
return {head, lo, hi, busy, holes, rows, previews, tonumber(epoch)}
