"""The Lua scripts that change a reply's state in Redis, each one atomic step.

Keys are built inside the scripts from :mod:`.names`' prefix: the gateway needs one
Redis (or Valkey) primary, not a Redis Cluster.
"""

from __future__ import annotations

__all__ = ["CANCEL", "CLAIM", "SHIP", "TAKEOVER"]

# Claim a conversation for a new reply. A slot whose reply is not streaming (ended, or
# gone with a lost Redis) is free, and so is one whose reply ended on this instance
# (its end not shipped yet). KEYS: slot, reply, owned:<me>.
# ARGV: reply id, conversation, message id, owner, ttl (ms), created (s), model, the
# conversation's reply that ended here ("" if none), the message it answers, the stored
# message it writes. Returns the reply holding the slot, or nothing when claimed.
CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and cur ~= ARGV[8]
    and redis.call('HGET', 'gateway:reply:' .. cur, 'state') == 'streaming' then
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
redis.call('HSET', KEYS[2], 'conv', ARGV[2], 'msg', ARGV[3], 'owner', ARGV[4], 'epoch', '1', 'seq', '0',
  'chars', '0', 'state', 'streaming', 'created', ARGV[6], 'model', ARGV[7], 'parent', ARGV[9], 'mid', ARGV[10])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[1])
return false
"""

# What an owner ships in one step, as records (one status each, in order):
#   R id conversation message owner epoch created model parent mid   register (claimed while
#                                           Redis was away, or Redis lost it); nothing if it is known
#   S id conversation payload               announce the start to the conversation
#   A id epoch base chars count kinds text...   deltas base+1 .. base+count (copies skipped);
#                                           kinds: "" (all answer text) or one t/r per delta
#                                           (r: reasoning, logged as field r, published as R)
#   E id epoch seq payload conversation forced   the end, once the log holds seq (forced:
#                                           at once, what is missing is gone for good)
# Statuses: ok, cancel (a stop was asked for), fenced (another instance took it over),
# gone (Redis lost it), behind (the end came before its deltas). ARGV[1]: ttl of a
# streaming reply (ms), ARGV[2]: how long an ended one stays (ms), ARGV[3]: owner.
SHIP = """
local ttl, grace, me = ARGV[1], ARGV[2], ARGV[3]
local out, i = {}, 4
local function state(id, epoch)
  local cur = redis.call('HMGET', 'gateway:reply:' .. id, 'epoch', 'seq', 'state', 'cancel')
  if not cur[1] then return 'gone', cur end
  if cur[1] ~= epoch or cur[3] ~= 'streaming' then return 'fenced', cur end
  return 'ok', cur
end
while i <= #ARGV do
  local kind, id = ARGV[i], ARGV[i + 1]
  local meta = 'gateway:reply:' .. id
  if kind == 'R' then
    if redis.call('EXISTS', meta) == 0 then  -- once (a retry must not reset it), never an ended one
      redis.call('DEL', 'gateway:log:' .. id)
      redis.call('HSET', meta, 'conv', ARGV[i + 2], 'msg', ARGV[i + 3], 'owner', ARGV[i + 4], 'epoch', ARGV[i + 5],
        'seq', '0', 'chars', '0', 'state', 'streaming', 'created', ARGV[i + 6], 'model', ARGV[i + 7],
        'parent', ARGV[i + 8], 'mid', ARGV[i + 9])
      redis.call('PEXPIRE', meta, ttl)
      redis.call('SET', 'gateway:slot:' .. ARGV[i + 2], id, 'PX', ttl, 'NX')
      redis.call('SADD', 'gateway:owned:' .. me, id)
    end
    out[#out + 1] = 'ok'
    i = i + 10
  elseif kind == 'S' then
    redis.call('PUBLISH', 'gateway:c:' .. ARGV[i + 2], ARGV[i + 3])
    out[#out + 1] = 'ok'
    i = i + 4
  elseif kind == 'A' then
    local base, count, kinds = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 5]), ARGV[i + 6]
    local status, cur = state(id, ARGV[i + 2])
    if status == 'ok' then
      local seq = tonumber(cur[2])
      if base > seq then
        status = 'behind'
      else
        local log = 'gateway:log:' .. id
        for j = 1, count do
          local s = base + j
          if s > seq then
            local text, field, tag = ARGV[i + 6 + j], 't', 'D'
            if kinds ~= '' and string.sub(kinds, j, j) == 'r' then field, tag = 'r', 'R' end
            redis.call('XADD', log, s .. '-0', field, text)
            redis.call('PUBLISH', 'gateway:r:' .. id, tag .. s .. '\\n' .. text)
            seq = s
          end
        end
        redis.call('PEXPIRE', log, ttl)
        redis.call('HSET', meta, 'seq', seq, 'chars', ARGV[i + 4])
        if cur[4] then status = 'cancel' end
      end
    end
    out[#out + 1] = status
    i = i + 7 + count
  elseif kind == 'E' then
    local status, cur = state(id, ARGV[i + 2])
    if status == 'ok' then
      if tonumber(cur[2]) < tonumber(ARGV[i + 3]) and ARGV[i + 6] ~= '1' then
        status = 'behind'
      else
        redis.call('HSET', meta, 'state', 'ended', 'end', ARGV[i + 4])
        redis.call('PEXPIRE', meta, grace)
        redis.call('PEXPIRE', 'gateway:log:' .. id, grace)
        local slot = 'gateway:slot:' .. ARGV[i + 5]
        if redis.call('GET', slot) == id then redis.call('DEL', slot) end
        redis.call('SREM', 'gateway:owned:' .. redis.call('HGET', meta, 'owner'), id)
        redis.call('PUBLISH', 'gateway:r:' .. id, 'E' .. ARGV[i + 4])
      end
    end
    out[#out + 1] = status
    i = i + 7
  else
    return redis.error_reply('unknown record ' .. tostring(kind))
  end
end
return out
"""

# Take over the replies of an instance whose lease expired: each gets a new epoch (its old
# owner's writes are refused from now on) and this instance as owner.
# KEYS: instances, owned:<dead>, owned:<me>, instance:<dead>. ARGV: dead, me.
# Returns id, epoch, id, epoch... (nothing if the lease is back).
TAKEOVER = """
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local taken = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local meta = 'gateway:reply:' .. id
  if redis.call('HGET', meta, 'state') == 'streaming' then
    local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
    redis.call('HSET', meta, 'owner', ARGV[2])
    redis.call('SADD', KEYS[3], id)
    taken[#taken + 1] = id
    taken[#taken + 1] = tostring(epoch)
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
return taken
"""

# Ask a reply's owner to stop it. KEYS: reply. ARGV: conversation, reply id.
# Returns the owner, or gone / ended / other (another conversation's).
CANCEL = """
local cur = redis.call('HMGET', KEYS[1], 'conv', 'state', 'owner')
if not cur[1] then return 'gone' end
if cur[1] ~= ARGV[1] then return 'other' end
if cur[2] ~= 'streaming' then return 'ended' end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('PUBLISH', 'gateway:i:' .. cur[3], 'C' .. ARGV[2])
return cur[3]
"""
