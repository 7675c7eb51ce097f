#!lua name=reconciler
-- The daemon's Redis function library (FUNCTION LOAD). Every read-compare-write of a key
-- and its metadata happens here, atomically. The Python mirrors (replication/model/digest.py,
-- vclock.py, resolver.py) must agree with this file; tests check they do.
--
-- Metadata of a key, in the per-slot hash KEYS[2], field = the key, value = cmsgpack of
--   { digest (16 raw bytes), origin (its 0-based position among the clock's regions; older
--     records: the region's name), expire_at ms (0 none), deleted (0/1),
--     clock {region, ts, region, ts, ...} sorted bytewise by region }
-- Strings are compared bytewise (never with Lua's `<`, which follows the server's locale).

local LIB_VERSION = '__LIB_VERSION__'
-- The largest clock entry (replication.model.vclock.MAX_CLOCK_ENTRY, filled in at load):
-- a tick past it is refused, never stored, so no version carries an entry the decoders
-- refuse. Below 2**53 by 2**32, so every entry still adds and compares exactly here.
local MAX_CLOCK = __MAX_CLOCK_ENTRY__
local LANE = 4294967296

local function enc(s)
  return string.format('%d', #s) .. ':' .. s
end

-- The first 16 bytes of a SHA-1 from its hex form. Four 8-digit numbers packed big-endian
-- cost Redis 8.3k instructions per digest (callgrind), a gsub over a byte table 18.8k.
local function sha16(s)
  local hex = redis.sha1hex(s)
  return struct.pack('>I4I4I4I4',
    tonumber(string.sub(hex, 1, 8), 16), tonumber(string.sub(hex, 9, 16), 16),
    tonumber(string.sub(hex, 17, 24), 16), tonumber(string.sub(hex, 25, 32), 16))
end

-- Library load time only sees a restricted environment (no string, no redis.sha1hex),
-- so the constant is computed on first use.
local TOMBSTONE_CACHE = nil
local function tombstone()
  if not TOMBSTONE_CACHE then TOMBSTONE_CACHE = sha16('reconciler:tombstone') end
  return TOMBSTONE_CACHE
end

local function add_lanes(acc, hex)
  acc[1] = (acc[1] + tonumber(string.sub(hex, 1, 8), 16)) % LANE
  acc[2] = (acc[2] + tonumber(string.sub(hex, 9, 16), 16)) % LANE
  acc[3] = (acc[3] + tonumber(string.sub(hex, 17, 24), 16)) % LANE
  acc[4] = (acc[4] + tonumber(string.sub(hex, 25, 32), 16)) % LANE
end

local function finish(tag, body, exp)
  return sha16(tag .. body .. 'x' .. string.format('%d', exp))
end

local function fmt_score(s)
  local n = tonumber(s)
  if n == 0 then n = 0 end -- -0 and 0 are one score
  return string.format('%.17g', n)
end

-- Canonical digest of a value given as Redis returns it (see replication/model/digest.py).
local function digest(kind, v, exp)
  if kind == 'none' then return tombstone() end
  if kind == 'string' then return finish('s', enc(v), exp) end
  if kind == 'list' then
    local parts = { string.format('%d', #v), ':' }
    for i = 1, #v do parts[#parts + 1] = enc(v[i]) end
    return finish('l', table.concat(parts), exp)
  end
  local acc = { 0, 0, 0, 0 }
  local n, tag = 0, nil
  if kind == 'hash' then
    tag = 'h'
    for i = 1, #v, 2 do add_lanes(acc, redis.sha1hex(enc(v[i]) .. enc(v[i + 1]))); n = n + 1 end
  elseif kind == 'set' then
    tag = 't'
    for i = 1, #v do add_lanes(acc, redis.sha1hex(enc(v[i]))); n = n + 1 end
  elseif kind == 'zset' then
    tag = 'z'
    for i = 1, #v, 2 do
      add_lanes(acc, redis.sha1hex(enc(v[i]) .. enc(fmt_score(v[i + 1])))); n = n + 1
    end
  else
    return nil
  end
  local lanes = string.format('%08x%08x%08x%08x', acc[1], acc[2], acc[3], acc[4])
  return finish(tag, string.format('%d', n) .. ':' .. lanes, exp)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The key's current state: kind, value (string or flat table), absolute expiry ms (0 none).
-- OBJECT ENCODING says whether the key exists and whether it is a string in one bulk reply;
-- TYPE (whose status reply becomes a table) is asked only for the other kinds.
local STRING_ENCODINGS = { raw = true, embstr = true, int = true }
local function read_state(key)
  local encoding = redis.call('OBJECT', 'ENCODING', key)
  if not encoding then return 'none', false, 0 end
  local exp = redis.call('PEXPIRETIME', key)
  if exp < 0 then exp = 0 end
  if STRING_ENCODINGS[encoding] then return 'string', redis.call('GET', key), exp end
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'string' then return kind, redis.call('GET', key), exp end
  if kind == 'hash' then return kind, redis.call('HGETALL', key), exp end
  if kind == 'list' then return kind, redis.call('LRANGE', key, 0, -1), exp end
  if kind == 'set' then return kind, redis.call('SMEMBERS', key), exp end
  if kind == 'zset' then return kind, redis.call('ZRANGE', key, 0, -1, 'WITHSCORES'), exp end
  return kind, false, exp
end

local function bytes_lt(a, b)
  local la, lb = #a, #b
  local n = la < lb and la or lb
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end

local function clock_map(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end

local function clock_flat(m)
  local regions = {}
  for r, c in pairs(m) do if c > 0 then regions[#regions + 1] = r end end
  table.sort(regions, bytes_lt)
  local flat = {}
  for _, r in ipairs(regions) do flat[#flat + 1] = r; flat[#flat + 1] = m[r] end
  return flat
end

-- How clock a relates to clock b, ignoring retired regions.
local function clock_compare(a, b, retired)
  local greater, lesser = false, false
  for r, ca in pairs(a) do
    if not retired[r] then
      local cb = b[r] or 0
      if ca > cb then greater = true elseif ca < cb then lesser = true end
    end
  end
  for r, cb in pairs(b) do
    if a[r] == nil and not retired[r] and cb > 0 then lesser = true end
  end
  if greater and lesser then return 'concurrent' end
  if greater then return 'after' end
  if lesser then return 'before' end
  return 'equal'
end

local function clock_merge(a, b)
  local m = {}
  for r, c in pairs(a) do m[r] = c end
  for r, c in pairs(b) do if c > (m[r] or 0) then m[r] = c end end
  return m
end

-- A new write by region: its entry goes above every entry of the clock it builds on, so
-- a write that causally follows another always has the larger timestamp as well (the
-- conflict rule then never contradicts causality, even under clock skew).
local function clock_tick(m, region, tick)
  local top = 0
  for _, c in pairs(m) do if c > top then top = c end end
  m[region] = math.max(top + 1, tick)
  return m
end

local function parse_retired(csv)
  local set = {}
  for r in string.gmatch(csv, '[^,]+') do set[r] = true end
  return set
end

-- The origin is stored as its position in the sorted clock (it always has an entry there):
-- one byte instead of the region's name. Records written with the name are still read.
local function pack_meta(dig, origin, exp, deleted, clock)
  local flat = clock_flat(clock)
  local stored = origin
  for i = 1, #flat, 2 do
    if flat[i] == origin then stored = (i - 1) / 2; break end
  end
  return cmsgpack.pack({ dig, stored, exp, deleted, flat })
end

local function meta_origin(meta)
  local o = meta[2]
  if type(o) == 'number' then return meta[5][2 * o + 1] end
  return o
end

local function expired(meta, now)
  return meta[3] > 0 and meta[3] <= now
end

-- Redis commands take at most a few thousand arguments from Lua's unpack(): write in chunks.
local CHUNK = 1000
local function call_chunked(cmd, key, items, pair_swap)
  local i = 1
  while i <= #items do
    local args = {}
    local last = math.min(i + CHUNK - 1, #items)
    if pair_swap then
      for j = i, last, 2 do args[#args + 1] = items[j + 1]; args[#args + 1] = items[j] end
    else
      for j = i, last do args[#args + 1] = items[j] end
    end
    redis.call(cmd, key, unpack(args))
    i = last + 1
  end
end

-- Writes a remote state. `existed`: the key holds a value now (read_state said so), so a
-- different kind must be deleted first; a string is replaced by SET alone (SET overwrites
-- any type and its expiry), with the expiry in the same command.
local function write_state(key, kind, values, exp, now, existed)
  if kind == 'none' or (exp > 0 and exp <= now) then
    if existed then redis.call('DEL', key) end
    return
  end
  if kind == 'string' then
    if exp > 0 then redis.call('SET', key, values[1], 'PXAT', exp)
    else redis.call('SET', key, values[1]) end
    return
  end
  if existed then redis.call('DEL', key) end
  if kind == 'hash' then call_chunked('HSET', key, values, false)
  elseif kind == 'list' then call_chunked('RPUSH', key, values, false)
  elseif kind == 'set' then call_chunked('SADD', key, values, false)
  elseif kind == 'zset' then call_chunked('ZADD', key, values, true)
  end
  if exp > 0 then redis.call('PEXPIREAT', key, exp) end
end

-- The digest of stored metadata, sliced from its bytes (cmsgpack writes a 16-byte string as
-- fixstr 0xb0 right after the array header), or nil when it does not have that layout.
-- Comparing the slice skips unpacking the record on the common path (a no-op or an echo).
local function meta_digest(raw)
  if raw and string.byte(raw, 2) == 0xb0 then return string.sub(raw, 3, 18) end
  return nil
end

-- A tick that would pass MAX_CLOCK: appends the refusal (4, region, entry) to `out`.
local function clock_refused(clock, region, n, out)
  if clock[region] <= MAX_CLOCK then return false end
  out[n + 1] = 4; out[n + 2] = region; out[n + 3] = string.format('%d', clock[region])
  return true
end

-- What a key holds, in one comparable string: 'n' absent, 'u' .. type for a type we do not
-- replicate, 'd' .. digest otherwise. `dig`: the digest of the key's value (nil if none).
local function state_token(kind, dig)
  if kind == 'none' then return 'n' end
  if not dig then return 'u' .. kind end
  return 'd' .. dig
end

-- Versions one key (see rr_version). Appends its reply to `out`, flat:
--   0                                   nothing to ship (an echo of an apply, a no-op, an expiry)
--   1, kind, value, meta_raw, old_digest a new local version (meta_raw: what was stored)
--   2, kind, value, meta_raw, old_digest in replay, a version of ours maybe not shipped yet
--   3, kind                             a type we do not replicate
--   4, region, entry                    refused: the tick would pass MAX_CLOCK (nothing
--                                       written; the key's clock is at the top of its range)
-- value: a string (strings; '' for a delete) or a flat table (other kinds). meta_raw holds
-- the digest, origin, expiry and clock of the version, in the stored layout.
local function version_key(key, mkey, region, tick, replay, out, dtick, expect)
  -- dtick: the tick of a delete (a tombstone) and of a key without metadata, when it must
  -- differ from the tick of a key whose clock is known (writes found late: the versioner)
  -- expect: the key's state token (see state_token) when it was probed; a key whose state
  -- changed since is left alone (0): that is a later write, the capture versions it.
  dtick = dtick or tick
  local n = #out
  local raw = redis.call('HGET', mkey, key)
  local kind, value, exp = read_state(key)
  local dig = nil
  if kind ~= 'none' then dig = digest(kind, value, exp) end
  if expect and state_token(kind, dig) ~= expect then out[n + 1] = 0; return end
  if kind == 'none' then
    if not raw then out[n + 1] = 0; return end
    local meta = cmsgpack.unpack(raw)
    local old = meta[4] == 0 and meta[1] or ''
    if meta[4] == 1 then
      if replay and meta_origin(meta) == region then
        out[n + 1] = 2; out[n + 2] = 'none'; out[n + 3] = ''; out[n + 4] = raw
        out[n + 5] = old
        return
      end
      out[n + 1] = 0
      return
    end
    if expired(meta, now_ms()) then out[n + 1] = 0; return end
    local clock = clock_tick(clock_map(meta[5]), region, dtick)
    if clock_refused(clock, region, n, out) then return end
    local packed = pack_meta(tombstone(), region, 0, 1, clock)
    redis.call('HSET', mkey, key, packed)
    out[n + 1] = 1; out[n + 2] = 'none'; out[n + 3] = ''; out[n + 4] = packed; out[n + 5] = old
    return
  end
  if not dig then
    -- A type we do not replicate (a stream, a module type). If the key was replicated
    -- until now, for the other regions it is gone: ship that as a delete.
    local meta = raw and cmsgpack.unpack(raw) or nil
    if meta and meta[4] == 0 then
      local clock = clock_tick(clock_map(meta[5]), region, dtick)
      if clock_refused(clock, region, n, out) then return end
      local packed = pack_meta(tombstone(), region, 0, 1, clock)
      redis.call('HSET', mkey, key, packed)
      out[n + 1] = 1; out[n + 2] = 'none'; out[n + 3] = ''; out[n + 4] = packed
      out[n + 5] = meta[1]
      return
    end
    out[n + 1] = 3; out[n + 2] = kind
    return
  end
  local stored = meta_digest(raw)
  if stored == dig then
    -- A live value's digest never equals the tombstone's, so the record is live.
    if replay and meta_origin(cmsgpack.unpack(raw)) == region then
      out[n + 1] = 2; out[n + 2] = kind; out[n + 3] = value; out[n + 4] = raw
      out[n + 5] = dig
      return
    end
    out[n + 1] = 0
    return
  end
  local meta = raw and cmsgpack.unpack(raw) or nil
  local old = (meta and meta[4] == 0) and meta[1] or ''
  local clock = clock_tick(meta and clock_map(meta[5]) or {}, region, meta and tick or dtick)
  if clock_refused(clock, region, n, out) then return end
  local packed = pack_meta(dig, region, exp, 0, clock)
  redis.call('HSET', mkey, key, packed)
  out[n + 1] = 1; out[n + 2] = kind; out[n + 3] = value; out[n + 4] = packed; out[n + 5] = old
end

-- rr_version(KEYS: key, metahash; ARGV: region, tick, replay 0/1)
-- Versions a local write: if the key's value no longer matches its metadata, this region's
-- clock entry is bumped to tick and the new metadata stored; the state is returned to ship.
-- Replies: {0} nothing to ship (an echo of an apply, a no-op, an expiry);
--          {1, kind, value, exp, digest, clock, origin, old_digest} a new local version;
--          {2, ...same} in replay, a version of ours that may not have been shipped yet;
--          {3, kind} a type we do not replicate;
--          {4, region, entry} refused: the tick would pass MAX_CLOCK (nothing written).
local function rr_version(keys, args)
  local out = {}
  version_key(keys[1], keys[2], args[1], tonumber(args[2]), args[3] == '1', out)
  local code = out[1]
  if code == 0 or code == 3 or code == 4 then return out end
  local meta = cmsgpack.unpack(out[4])
  local value = out[3]
  if type(value) ~= 'table' then value = { value } end
  return { code, out[2], value, meta[3], meta[1], meta[5], meta_origin(meta), out[5] }
end

-- rr_version_many(KEYS: key1, metahash1, key2, metahash2, ...; ARGV: region, tick, replay
--                  [, delete tick])
-- rr_version for many keys in one call (the per-call cost of a script is paid once), with
-- the replies of every key one after the other in one flat array (see version_key). A
-- second tick, when given, dates the tombstones and the keys without metadata (writes
-- found late: see the versioner).
local function rr_version_many(keys, args)
  local out = {}
  local region, tick, replay = args[1], tonumber(args[2]), args[3] == '1'
  local dtick = args[4] and tonumber(args[4]) or tick
  for i = 1, #keys, 2 do
    -- ARGV[5..]: the state token each key was probed with, if it was (rr_probe_many)
    version_key(keys[i], keys[i + 1], region, tick, replay, out, dtick, args[4 + (i + 1) / 2])
  end
  return out
end

-- rr_probe_many(KEYS: key1, metahash1, key2, metahash2, ...): for each key, '' if
-- versioning it would find nothing (its state agrees with its metadata; absent with a
-- tombstone, no metadata or an expired version), else its state token (state_token). Read
-- only. Writes found late after a gap are probed, then versioned with these tokens once the
-- capture has versioned everything written before the probe: only a state the capture
-- never shows (what the Redis came back with) is then dated as found late.
local function rr_probe_many(keys, args)
  local out = {}
  local now = now_ms()
  for i = 1, #keys, 2 do
    local key, mkey = keys[i], keys[i + 1]
    local raw = redis.call('HGET', mkey, key)
    local kind, value, exp = read_state(key)
    local token = ''
    if kind == 'none' then
      if raw then
        local meta = cmsgpack.unpack(raw)
        if meta[4] == 0 and not expired(meta, now) then token = 'n' end
      end
    else
      local dig = digest(kind, value, exp)
      if not dig or meta_digest(raw) ~= dig then token = state_token(kind, dig) end
    end
    out[#out + 1] = token
  end
  return out
end

-- Applies one remote version (see rr_apply); returns outcome, old digest, old metadata
-- (the raw record, or '' when there is none).
local function apply_key(key, mkey, retired, kind, exp, dig, origin, rflat, values, now)
  local expect
  if kind == 'string' then expect = digest(kind, values[1] or '', exp)
  else expect = digest(kind, values, exp) end
  if expect ~= dig then return 'bad-digest', '', '' end

  local raw = redis.call('HGET', mkey, key)
  local meta = raw and cmsgpack.unpack(raw) or nil
  local old = (meta and meta[4] == 0) and meta[1] or ''
  local ck, cv, ce = read_state(key)
  local existed = ck ~= 'none'
  if existed then
    local current = digest(ck, cv, ce)
    -- The key holds a type we do not replicate: leave it alone (the applier reports it);
    -- deferring would wait forever, versioning cannot make it consistent.
    if not current then return 'unsupported-local', old, raw or '' end
    if not meta or meta[4] == 1 then return 'deferred', old, raw or '' end
    if current ~= meta[1] then return 'deferred', old, raw or '' end
  elseif meta and meta[4] == 0 and not expired(meta, now) then
    return 'deferred', old, raw or ''
  end

  local rclock = clock_map(rflat)
  local lclock = meta and clock_map(meta[5]) or {}
  local order = clock_compare(rclock, lclock, retired)
  if order == 'before' or order == 'equal' then return 'stale', old, raw or '' end
  local outcome, clock = 'applied', rclock
  if order == 'concurrent' then
    clock = clock_merge(rclock, lclock)
    local lorigin = meta_origin(meta)
    local lts, rts = lclock[lorigin] or 0, rclock[origin] or 0
    local remote_wins
    if rts ~= lts then remote_wins = rts > lts
    elseif lorigin ~= origin then remote_wins = bytes_lt(lorigin, origin)
    else remote_wins = bytes_lt(meta[1], dig) end
    if not remote_wins then
      redis.call('HSET', mkey, key, pack_meta(meta[1], lorigin, meta[3], meta[4], clock))
      return 'conflict-local-won', old, raw
    end
    outcome = 'conflict-remote-won'
  end
  write_state(key, kind, values, exp, now, existed)
  local deleted = kind == 'none' and 1 or 0
  redis.call('HSET', mkey, key, pack_meta(dig, origin, exp, deleted, clock))
  return outcome, old, raw or ''
end

-- rr_apply(KEYS: key, metahash; ARGV: local region, retired csv, kind, exp, digest, origin,
--          packed clock, value...)
-- Applies a remote version if the clocks say so (conflicts by last-writer-wins on the
-- origin's hybrid timestamp, then region name, then digest, all bytewise), value, expiry
-- and metadata together. Refuses ('deferred') while the key holds a local write that was
-- not versioned yet, so that write is never overwritten unseen.
-- Replies: {outcome, old_digest, old_meta_raw} with outcome one of applied, stale,
--          conflict-remote-won, conflict-local-won, deferred, bad-digest,
--          unsupported-local (the key holds a stream or module type here).
local function rr_apply(keys, args)
  local values = {}
  for i = 8, #args do values[#values + 1] = args[i] end
  local outcome, old, raw = apply_key(
    keys[1], keys[2], parse_retired(args[2]), args[3], tonumber(args[4]), args[5], args[6],
    cmsgpack.unpack(args[7]), values, now_ms())
  return { outcome, old, raw }
end

-- rr_apply_many(KEYS: key1, metahash1, ...; ARGV: local region, retired csv, then per key:
--               kind, exp, digest, origin, packed clock, number of values, value...)
-- rr_apply for many events in one call. Reply: per event, one after the other, outcome and
-- old digest, and the old metadata record only for conflicts ('' otherwise: nothing else
-- needs it, and it is the largest part of the reply).
local function rr_apply_many(keys, args)
  local retired = parse_retired(args[2])
  local now = now_ms()
  local out = {}
  local a = 3
  for i = 1, #keys, 2 do
    local nvalues = tonumber(args[a + 5])
    local values = {}
    for j = 1, nvalues do values[j] = args[a + 5 + j] end
    local outcome, old, raw = apply_key(
      keys[i], keys[i + 1], retired, args[a], tonumber(args[a + 1]), args[a + 2], args[a + 3],
      cmsgpack.unpack(args[a + 4]), values, now)
    local n = #out
    out[n + 1] = outcome; out[n + 2] = old
    if outcome == 'conflict-local-won' or outcome == 'conflict-remote-won' then
      out[n + 3] = raw
    else
      out[n + 3] = ''
    end
    a = a + 6 + nvalues
  end
  return out
end

-- rr_read(KEYS: key1, metahash1, key2, metahash2, ...): for each key its current state,
-- the digest of that state and its raw metadata (for repair, resync and verify).
-- Reply per key: {kind, value, exp, digest, meta_raw}.
local function rr_read(keys, args)
  local out = {}
  for i = 1, #keys, 2 do
    local kind, value, exp = read_state(keys[i])
    local dig = digest(kind, value, exp) or ''
    if kind == 'string' or kind == 'none' then value = { value or '' } end
    local raw = redis.call('HGET', keys[i + 1], keys[i])
    out[#out + 1] = { kind, value, exp, dig, raw or '' }
  end
  return out
end

-- rr_digest(ARGV: kind, exp, value...): the canonical digest of a value given as arguments
-- (used by tests to check the Python mirror agrees).
local function rr_digest(keys, args)
  local values = {}
  for i = 3, #args do values[#values + 1] = args[i] end
  if args[1] == 'string' then return digest('string', values[1] or '', tonumber(args[2])) end
  return digest(args[1], values, tonumber(args[2]))
end

-- rr_forget(KEYS: key, metahash; ARGV: raw): garbage-collect a metadata entry (an old
-- tombstone, an expired key's metadata) only if it is still exactly `raw` and the key does
-- not exist: a write that landed meanwhile is never forgotten. Reply: 1 removed, 0 kept.
local function rr_forget(keys, args)
  local key, mkey, raw = keys[1], keys[2], args[1]
  if redis.call('HGET', mkey, key) ~= raw then return 0 end
  if redis.call('EXISTS', key) == 1 then return 0 end
  redis.call('HDEL', mkey, key)
  return 1
end

-- The run_id of this Redis instance (INFO server): a new random one at every start, so it
-- tells a restarted or replaced Redis from the one a repair ran on.
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
end

-- rr_mark_verified(KEYS: marker; ARGV: run_id, nonce): a repair completed on the instance
-- `run_id`; record "<run_id>:<nonce>" as the proof. Refused if this is another instance
-- (the Redis restarted while the repair ran). Reply: the marker.
local function rr_mark_verified(keys, args)
  local rid = run_id()
  if rid ~= args[1] then
    return redis.error_reply('RRINSTANCE this Redis is instance ' .. rid .. ', the repair ran on ' .. args[1])
  end
  local marker = rid .. ':' .. args[2]
  redis.call('SET', keys[1], marker)
  return marker
end

-- rr_status(KEYS: status, marker[, shipped]; ARGV: state, region, since_ms, last_repair_ms,
--           updated_ms, ttl_ms, marker the daemon holds or ''[, shipped_through_ms])
-- Replaces the status record, stamped with this instance's run_id, with its expiry. Refuses
-- `consistent` (RRUNVERIFIED) unless the marker key holds exactly the marker the daemon
-- holds and that marker names this instance: only a repair completed on this instance can
-- make it say consistent, whatever the daemon believes. A `consistent` status also records
-- in the `shipped` key (no expiry) the moment before which this dataset's writes were all
-- versioned and shipped: a copy of the dataset brought back later (an old backup, an RDB
-- from before a crash) carries its own moment, which dates what it holds unversioned.
-- Only a verified dataset gets it, so a restored one cannot be stamped before it is swept.
-- Reply: the run_id.
local function rr_status(keys, args)
  local rid = run_id()
  if args[1] == 'consistent' then
    local held = args[7]
    if held == '' or string.sub(held, 1, #rid + 1) ~= rid .. ':' or redis.call('GET', keys[2]) ~= held then
      return redis.error_reply('RRUNVERIFIED no repair completed on this Redis instance (' .. rid .. ')')
    end
  end
  redis.call('DEL', keys[1])
  redis.call('HSET', keys[1], 'state', args[1], 'region', args[2], 'since_ms', args[3],
    'last_repair_ms', args[4], 'updated_ms', args[5], 'run_id', rid)
  redis.call('PEXPIRE', keys[1], args[6])
  if args[1] == 'consistent' and keys[3] and args[8] and args[8] ~= '' then
    redis.call('SET', keys[3], args[8])
  end
  return rid
end

redis.register_function('rr_version', rr_version)
redis.register_function('rr_forget', rr_forget)
redis.register_function('rr_apply', rr_apply)
redis.register_function('rr_version_many', rr_version_many)
redis.register_function('rr_apply_many', rr_apply_many)
redis.register_function('rr_mark_verified', rr_mark_verified)
redis.register_function('rr_status', rr_status)
redis.register_function{ function_name = 'rr_read', callback = rr_read, flags = { 'no-writes' } }
redis.register_function{
  function_name = 'rr_probe_many', callback = rr_probe_many, flags = { 'no-writes' },
}
redis.register_function{ function_name = 'rr_digest', callback = rr_digest, flags = { 'no-writes' } }
redis.register_function{
  function_name = 'rr_lib_version',
  callback = function() return LIB_VERSION end,
  flags = { 'no-writes' },
}
