"""The Lua scripts of the Redis layer: each one atomic step on Redis's side.

Sending to a channel, presence beats, and every step of a durable channel (durable.py) that must
not be split: a send that checks capacity, an acknowledgement that checks who holds the message,
a reclaim that judges a worker dead and takes back what it held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

__all__ = [
    "DURABLE_ACK",
    "DURABLE_PROMOTE",
    "DURABLE_RECLAIM",
    "DURABLE_RELEASE",
    "DURABLE_REQUEUE",
    "DURABLE_SEND",
    "PRESENCE_BEAT",
    "PRESENCE_PRUNE",
    "SEND",
    "Lua",
]


@dataclass(frozen=True)
class Lua:
    """A Lua script run by EVALSHA, falling back to EVAL when Redis lost its script cache."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)

    async def run(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: EVAL runs it and caches it again.
            return await conn.eval(self.source, len(keys), *keys, *args)


# KEYS[1] channel key; ARGV: message, score (now), expiry cutoff, capacity, key ttl (s).
# Returns 1 when stored, 0 when the channel is full. Receivers skip expired messages, so they
# are only trimmed once they could make the channel look full.
SEND = Lua(
    """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
    if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
        return 0
    end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
)

# KEYS[1] presence hash; ARGV: member, record, ttl (ms). The hash outlives its longest member.
PRESENCE_BEAT = Lua(
    """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
)

# KEYS[1] presence hash; ARGV: member1, record1, member2, record2, ...
# Deletes a member only if it still holds the record that was judged dead, so a beat that
# lands between reading and pruning is not thrown away.
PRESENCE_PRUNE = Lua(
    """
local removed = 0
for i = 1, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
        removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
return removed
"""
)


# -- durable queues (bus/layers/durable.py) ---------------------------------------------------
# A durable channel is a stream with one consumer group, "workers"; each worker reads as its
# own consumer, so Redis keeps what it holds in its pending list until it is acknowledged.
# Every entry has three fields: m (the serialized message), n (its delivery number, from 1),
# h (the workers that died holding it, comma-separated). Delayed messages (retries) wait in a
# sorted set by due time as msgpack [m, n, h, nonce] until a receive promotes them.

# Shared by the scripts below: ensure the group, read an entry's fields, take an entry off.
_DURABLE_HELPERS = """
local function ensure_group(stream)
    if redis.call('EXISTS', stream) == 0 then
        redis.call('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
    end
end
local function fields(stream, id)
    local found = redis.call('XRANGE', stream, id, id)
    if #found == 0 then return nil end
    local flat, f = found[1][2], {}
    for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
    return f
end
local function held_by(stream, id, consumer)
    return #redis.call('XPENDING', stream, 'workers', id, id, 1, consumer) == 1
end
local function drop(stream, id)
    redis.call('XACK', stream, 'workers', id)
    redis.call('XDEL', stream, id)
end
"""

# KEYS: stream, delayed. ARGV: message, capacity, due, now, nonce. 1 stored, 0 full.
DURABLE_SEND = Lua(
    _DURABLE_HELPERS
    + """
if redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
    return 0
end
if tonumber(ARGV[3]) > tonumber(ARGV[4]) then
    redis.call('ZADD', KEYS[2], ARGV[3], cmsgpack.pack({ARGV[1], 1, '', ARGV[5]}))
else
    ensure_group(KEYS[1])
    redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'n', 1, 'h', '')
end
return 1
"""
)

# KEYS: stream, delayed. ARGV: now, limit. Moves due delayed messages onto the stream; returns
# when the next one is due (a string, as Lua numbers lose precision in replies), or false.
DURABLE_PROMOTE = Lua(
    _DURABLE_HELPERS
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
    ensure_group(KEYS[1])
    for _, member in ipairs(due) do
        local entry = cmsgpack.unpack(member)
        redis.call('XADD', KEYS[1], '*', 'm', entry[1], 'n', entry[2], 'h', entry[3])
        redis.call('ZREM', KEYS[2], member)
    end
end
local next = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return next[2] or false
"""
)

# KEYS: stream. ARGV: consumer, id, id, ... Acknowledges (and deletes) each entry that this
# consumer still holds; one handed to another worker meanwhile is left alone. Returns how many.
DURABLE_ACK = Lua(
    _DURABLE_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local acked = 0
for i = 2, #ARGV do
    if held_by(KEYS[1], ARGV[i], ARGV[1]) then
        drop(KEYS[1], ARGV[i])
        acked = acked + 1
    end
end
return acked
"""
)

# KEYS: stream, delayed. ARGV: consumer, id, message ('' keeps it), due, now, nonce.
# An entry this consumer holds goes back: onto the stream now, or delayed until `due`, with
# the same delivery number. Returns 1, or 0 if the consumer did not hold it any more.
DURABLE_REQUEUE = Lua(
    _DURABLE_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or not held_by(KEYS[1], ARGV[2], ARGV[1]) then
    return 0
end
local f = fields(KEYS[1], ARGV[2])
if f then
    local message = ARGV[3] ~= '' and ARGV[3] or f['m']
    if tonumber(ARGV[4]) > tonumber(ARGV[5]) then
        redis.call('ZADD', KEYS[2], ARGV[4], cmsgpack.pack({message, tonumber(f['n']), f['h'], ARGV[6]}))
    else
        redis.call('XADD', KEYS[1], '*', 'm', message, 'n', f['n'], 'h', f['h'])
    end
end
drop(KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: stream, presence hash. ARGV: now, limit. Every consumer of the group without a live
# presence record (bus/layers/presence.py) is dead: what it holds goes back onto the stream
# with its delivery number raised and the consumer added to its history, and the consumer is
# removed. Judged and moved in one script, so a worker that beats again meanwhile keeps its own.
DURABLE_RECLAIM = Lua(
    _DURABLE_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], 'workers')
if not ok then return 0 end
local moved, limit = 0, tonumber(ARGV[2])
for _, info in ipairs(consumers) do
    local name = info[2]
    local alive = false
    local record = redis.call('HGET', KEYS[2], name)
    if record then
        local decoded, presence = pcall(cjson.decode, record)
        if decoded and type(presence) == 'table' then
            local expires = tonumber(presence['expires_at'])
            alive = expires ~= nil and expires > tonumber(ARGV[1])
        end
    end
    if not alive then
        local held = redis.call('XPENDING', KEYS[1], 'workers', '-', '+', limit, name)
        for _, pending in ipairs(held) do
            local f = fields(KEYS[1], pending[1])
            if f then
                local history = f['h'] == '' and name or (f['h'] .. ',' .. name)
                redis.call('XADD', KEYS[1], '*', 'm', f['m'], 'n', tonumber(f['n']) + 1, 'h', history)
            end
            drop(KEYS[1], pending[1])
            moved = moved + 1
        end
        if #held < limit then
            redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'workers', name)
        end
    end
end
return moved
"""
)

# KEYS: stream. ARGV: consumer, min idle (ms), ids the consumer has in hand... What the consumer
# holds in Redis but not in hand (a receive whose reply was lost with its connection), idle that
# long, goes back onto the stream as it was. Returns how many.
DURABLE_RELEASE = Lua(
    _DURABLE_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local in_hand = {}
for i = 3, #ARGV do in_hand[ARGV[i]] = true end
local held = redis.call('XPENDING', KEYS[1], 'workers', 'IDLE', tonumber(ARGV[2]), '-', '+', 1000, ARGV[1])
local moved = 0
for _, pending in ipairs(held) do
    if not in_hand[pending[1]] then
        local f = fields(KEYS[1], pending[1])
        if f then
            redis.call('XADD', KEYS[1], '*', 'm', f['m'], 'n', f['n'], 'h', f['h'])
        end
        drop(KEYS[1], pending[1])
        moved = moved + 1
    end
end
return moved
"""
)
