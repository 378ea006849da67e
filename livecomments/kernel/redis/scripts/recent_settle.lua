-- Cache dispatched events and clear their outbox entries
-- (livecomments/comment_service/recent.py, RecentCache.settle).
-- KEYS[1] the outbox (or ''), then per entry its video's cache key and reply
-- index key. ARGV[1] size, ARGV[2] ttl ms, then per entry: seq, JSON, rev, its
-- reply-index member ('' unless a reply), target seq (0: none), the target's
-- JSON, the target's reply-index member, the outbox member. An entry replaces
-- another at the same seq only when its rev is higher (the stored text never
-- goes backwards).
--
-- The reply index (one sorted set per video, every score 0, members
-- "{parent id}|{reply seq}", both padded) lists the cached replies by parent, so
-- a history page finds a comment's reply count and first replies in O(log n)
-- instead of reading every newer entry. It holds a member exactly while the
-- cache holds that reply's entry: members are added with the entry and removed
-- when the entry is trimmed.
-- include: lib_pad
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local function put(key, idx, seq, value, rev, member)
  local old = redis.call('ZRANGEBYSCORE', key, seq, seq)
  local keep = false
  if old[1] then
    local ok, cur = pcall(cjson.decode, old[1])
    keep = ok and type(cur) == 'table' and (tonumber(cur.rev) or 0) >= rev
    if not keep then redis.call('ZREMRANGEBYSCORE', key, seq, seq) end
  end
  if not keep then redis.call('ZADD', key, seq, value) end
  if member ~= '' then redis.call('ZADD', idx, 0, member) end
end
for e = 1, (#KEYS - 1) / 2 do
  local a = 2 + (e - 1) * 8
  local key, idx = KEYS[2 * e], KEYS[2 * e + 1]
  put(key, idx, tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4])
  local target = tonumber(ARGV[a + 5])
  if target > 0 then
    local ok, snap = pcall(cjson.decode, ARGV[a + 6])
    put(key, idx, target, ARGV[a + 6], ok and tonumber(snap.rev) or 0, ARGV[a + 7])
  end
  if size > 0 then
    local extra = redis.call('ZCARD', key) - size
    if extra > 0 then
      local gone = redis.call('ZRANGE', key, 0, extra - 1, 'WITHSCORES')
      for i = 1, #gone, 2 do
        local ok, old = pcall(cjson.decode, gone[i])
        if ok and type(old) == 'table' and type(old.parent_id) == 'string' then
          redis.call('ZREM', idx, pad(old.parent_id) .. '|' .. pad(gone[i + 1]))
        end
      end
      redis.call('ZREMRANGEBYRANK', key, 0, extra - 1)
    end
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', idx, ttl)
  else
    redis.call('DEL', key, idx)
  end
  if KEYS[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[a + 8]) end
end
return (#KEYS - 1) / 2
