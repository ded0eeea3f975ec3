//! The query index primitives on Redis: Lua scripts over sets, sorted sets
//! and hashes, all under one model's prefix and so in one hash slot
//! (the `{idx:<model>}` tag), which keeps each script atomic on a Redis
//! Cluster too. Needs Redis 7.0 or later (`SINTERCARD`, `SMISMEMBER`,
//! `ZMSCORE`).
//!
//! The scripts reach keys derived from the prefix they are given besides
//! the one declared in `KEYS` (which routes the call): they all share the
//! declared key's slot.

use std::sync::LazyLock;

use bytes::Bytes;
use redis::{Cmd, Script};

use super::keys::Keys;
use super::{RedisStore, near};
use crate::error::StoreError;
use crate::store::index::{COUNTS_MAX, score_arg};
use crate::store::{IndexPage, IndexQuery, IndexUpdate, ScoreRange, WARM_SUFFIX};

/// The suffix of the key holding the index's version (see [`APPLY`]).
const VERSION_SUFFIX: &str = "ver";

/// `ARGV`: prefix, token, a [version](crate::store::IndexPage::version)
/// never used before, then per update: member, record (JSON
/// `[[sets],[zsets]]`, empty to remove), the number of scores, the scores
/// (one per zset). Replies 1 or 0 per update: applied, or not (the member
/// was not leased with this token).
///
/// Sets the index's version (`ver`) to the one given when any set or
/// sorted set changed, in the same atomic step: a page read at the old
/// version is the page only until then (see `order_only_page`).
///
/// Deletes the count cache (`counts`, see [`QUERY`]) when any set or sorted
/// set changed: the replies of `SADD`, `SREM`, `ZADD CH` and `ZREM` say
/// whether they changed anything, so an update that leaves the member's
/// memberships and scores as they were (a save of unindexed fields) keeps
/// the cached counts, which are still exact. `UNLINK`: the hash can hold
/// up to [`COUNTS_MAX`] fields, and freeing them in the background keeps
/// that off the write's latency.
static APPLY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local P = ARGV[1]
local token = ARGV[2]
local leases = P .. 'lease'
local recs = P .. 'rec'
local all = P .. 'all'
local out = {}
local changed = false
local i = 4
while i <= #ARGV do
  local member = ARGV[i]
  local rec = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  local at = i + 3
  i = at + n
  if redis.call('HGET', leases, member) == token then
    redis.call('HDEL', leases, member)
    local olds, oldz, news, newz = {}, {}, {}, {}
    local old = redis.call('HGET', recs, member)
    if old then
      local d = cjson.decode(old)
      olds, oldz = d[1], d[2]
    end
    if rec ~= '' then
      local d = cjson.decode(rec)
      news, newz = d[1], d[2]
    end
    local keep = {}
    for _, s in ipairs(news) do
      keep[s] = true
      if redis.call('SADD', P .. s, member) == 1 then changed = true end
    end
    for _, s in ipairs(olds) do
      if not keep[s] and redis.call('SREM', P .. s, member) == 1 then changed = true end
    end
    local keepz = {}
    for j, z in ipairs(newz) do
      keepz[z] = true
      if redis.call('ZADD', P .. z, 'CH', ARGV[at + j - 1], member) == 1 then changed = true end
    end
    for _, z in ipairs(oldz) do
      if not keepz[z] and redis.call('ZREM', P .. z, member) == 1 then changed = true end
    end
    if rec ~= '' then
      redis.call('HSET', recs, member, rec)
      if redis.call('ZADD', all, 0, member) == 1 then changed = true end
    else
      redis.call('HDEL', recs, member)
      if redis.call('ZREM', all, member) == 1 then changed = true end
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if changed then
  redis.call('UNLINK', P .. 'counts')
  redis.call('SET', P .. 'ver', ARGV[3])
end
return out
",
    )
});

/// `KEYS`: the warm mark, the order's sorted set, the version. `ARGV`: the
/// version the caller's page was read at, the count's bounds (both empty:
/// `ZCARD`), then `ZRANGE`'s arguments after the key. Replies nil when the
/// index is not marked warm; `{total, version}` when the version is the
/// caller's and the sorted set is not empty; else
/// `{total, version or nil, members}`. See `RedisStore::unless_unchanged`.
static UNLESS_UNCHANGED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n
if ARGV[2] == '' then n = redis.call('ZCARD', KEYS[2])
else n = redis.call('ZCOUNT', KEYS[2], ARGV[2], ARGV[3]) end
local v = redis.call('GET', KEYS[3])
if v == ARGV[1] and redis.call('EXISTS', KEYS[2]) == 1 then return {n, v} end
return {n, v, redis.call('ZRANGE', KEYS[2], unpack(ARGV, 4))}
",
    )
});

/// `ARGV`: prefix, order suffix (empty: `all`), descending (`1`/`0`),
/// offset, limit (`-1`: none), ignore the warm mark (`1`/`0`), the number
/// of groups, per group its size and
/// set suffixes, the number of ranges, per range: zset suffix, min, min
/// exclusive, max, max exclusive (bounds as numbers, `-inf` or `+inf`).
/// Replies nil when the index is not marked warm, else `{total, members}`.
///
/// Plans: the order's sorted set alone is read by rank or score. Otherwise
/// the count is `SCARD` for one set alone; else it comes from the count
/// cache, or `SINTERCARD` computes it (exact sets only). With the count
/// known, a page that comes early in the order's sorted set is found by
/// walking it and checking each chunk against the filters (`SMISMEMBER`,
/// `ZMSCORE`). Otherwise the candidates are materialized (`SINTER`,
/// `SUNION` for a search term over several fields, or the narrowest score
/// range), filtered by score (`ZMSCORE`), counted, and ordered by walking
/// the order's sorted set or by sorting.
///
/// The count cache is the hash `counts`: field, a canonical form of the
/// filters (the groups with their sets sorted, and the ranges, sorted,
/// every string length-prefixed so that two different filters never share
/// a field); value, the number of members matching them. Only counts that
/// cost more than O(1) are cached: not one set's `SCARD`, nor one sorted
/// set's `ZCARD`/`ZCOUNT`. It stays exact because [`APPLY`], the only
/// script that changes sets and sorted sets, deletes the hash whenever it
/// changes one; so the first such query after a change computes the count
/// again. The hash is deleted when it reaches [`COUNTS_MAX`] fields before
/// a new one is added, so distinct queries cannot grow it without bound.
/// Writing it is best effort (`redis.pcall`): a server out of memory
/// refuses the write, and the count is right without it.
static QUERY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &r"
local P = ARGV[1]
if ARGV[6] ~= '1' and redis.call('EXISTS', P .. 'warm') == 0 then return false end
local all = P .. 'all'
local okey = all
if ARGV[2] ~= '' then okey = P .. ARGV[2] end
local desc = ARGV[3] == '1'
local offset = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local i = 7
local function enc(s) return #s .. ':' .. s end
local single, multi = {}, {}
-- The count cache's field, in parts: one per group, one per range.
local gparts, rparts = {}, {}
local ngroups = tonumber(ARGV[i]); i = i + 1
for g = 1, ngroups do
  local k = tonumber(ARGV[i]); i = i + 1
  local keys, names = {}, {}
  for j = 1, k do keys[j] = P .. ARGV[i]; names[j] = ARGV[i]; i = i + 1 end
  if k == 1 then single[#single + 1] = keys[1] else multi[#multi + 1] = keys end
  table.sort(names)
  for j = 1, k do names[j] = enc(names[j]) end
  gparts[#gparts + 1] = enc(table.concat(names))
end
local orange = nil
local others = {}
local nranges = tonumber(ARGV[i]); i = i + 1
for r = 1, nranges do
  local range = {key = P .. ARGV[i], min = ARGV[i + 1], minx = ARGV[i + 2] == '1',
                 max = ARGV[i + 3], maxx = ARGV[i + 4] == '1'}
  rparts[#rparts + 1] = enc(enc(ARGV[i]) .. enc(ARGV[i + 1]) .. ARGV[i + 2]
                            .. enc(ARGV[i + 3]) .. ARGV[i + 4])
  i = i + 5
  if range.key == okey and orange == nil then orange = range else others[#others + 1] = range end
end

local function num(s)
  if not s then return nil end
  if s == '-inf' then return -math.huge end
  if s == '+inf' or s == 'inf' then return math.huge end
  return tonumber(s)
end
local function lo(r) if r == nil then return '-inf' end return (r.minx and '(' or '') .. r.min end
local function hi(r) if r == nil then return '+inf' end return (r.maxx and '(' or '') .. r.max end
local function inside(v, r)
  if v == nil then return false end
  local a, b = num(r.min), num(r.max)
  if r.minx then if not (v > a) then return false end elseif not (v >= a) then return false end
  if r.maxx then if not (v < b) then return false end elseif not (v <= b) then return false end
  return true
end
local function chunked(cmd, key, list)
  local out = {}
  for s = 1, #list, 1000 do
    local part = redis.call(cmd, key, unpack(list, s, math.min(s + 999, #list)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
local function slice(list, from)
  local page = {}
  local last = #list
  if limit >= 0 then last = math.min(last, from + limit) end
  for j = from + 1, last do page[#page + 1] = list[j] end
  return page
end
local function filter(list, ok)
  local out = {}
  for j = 1, #list do if ok[j] then out[#out + 1] = list[j] end end
  return out
end
-- Walks the order's sorted set (within its range) in order, keeping what
-- `keep` accepts of each chunk, until `need` members are kept.
local function walk(need, batch, keep)
  local found = {}
  local start = 0
  batch = math.max(64, math.min(4000, batch))
  while #found < need do
    local chunk
    if orange then
      if desc then chunk = redis.call('ZREVRANGEBYSCORE', okey, hi(orange), lo(orange), 'LIMIT', start, batch)
      else chunk = redis.call('ZRANGEBYSCORE', okey, lo(orange), hi(orange), 'LIMIT', start, batch) end
    elseif desc then chunk = redis.call('ZREVRANGE', okey, start, start + batch - 1)
    else chunk = redis.call('ZRANGE', okey, start, start + batch - 1) end
    if #chunk == 0 then break end
    local ok = keep(chunk)
    for j = 1, #chunk do
      if ok[j] then
        found[#found + 1] = chunk[j]
        if #found >= need then break end
      end
    end
    start = start + #chunk
    if #chunk < batch then break end
    batch = math.min(batch * 2, 4000)
  end
  return found
end

-- The order's sorted set alone.
if #single == 0 and #multi == 0 and #others == 0 then
  local total
  if orange then total = redis.call('ZCOUNT', okey, lo(orange), hi(orange))
  else total = redis.call('ZCARD', okey) end
  local page = {}
  if limit ~= 0 and offset < total then
    if desc then page = redis.call('ZREVRANGEBYSCORE', okey, hi(orange), lo(orange), 'LIMIT', offset, limit)
    else page = redis.call('ZRANGEBYSCORE', okey, lo(orange), hi(orange), 'LIMIT', offset, limit) end
  end
  return {total, page}
end

-- The count, when it is cheap: one set's SCARD, the cache, or SINTERCARD
-- for exact sets only (and a limit: without one the candidates are read
-- anyway). Anything else is counted once materialized, below.
local counts = P .. 'counts'
local cacheable = not (#single == 1 and #multi == 0 and #others == 0 and orange == nil)
local field = nil
local function remember(c)
  if not cacheable then return end
  if redis.call('HLEN', counts) >= COUNTS_MAX then redis.pcall('UNLINK', counts) end
  redis.pcall('HSET', counts, field, c)
end
local total = nil
if not cacheable then total = redis.call('SCARD', single[1])
else
  table.sort(gparts)
  table.sort(rparts)
  field = #gparts .. ':' .. table.concat(gparts) .. #rparts .. ':' .. table.concat(rparts)
  local hit = redis.call('HGET', counts, field)
  if hit then total = tonumber(hit)
  elseif #multi == 0 and #others == 0 and orange == nil and limit >= 0 then
    total = redis.call('SINTERCARD', #single, unpack(single))
    remember(total)
  end
end

-- With the count known, walk the order when that is cheaper than reading
-- the candidates, checking each chunk against every filter.
if total ~= nil then
  if total == 0 or limit == 0 or offset >= total then return {total, {}} end
  local need = offset + limit
  local n = redis.call('ZCARD', okey)
  if limit >= 0 and need * n < total * total then
    -- Smallest set first: the others only check what it kept.
    local sizes = {}
    for _, key in ipairs(single) do sizes[key] = redis.call('SCARD', key) end
    table.sort(single, function(a, b) return sizes[a] < sizes[b] end)
    local found = walk(need, math.ceil(need * n / total * 1.2) + 16, function(chunk)
      local left, at = chunk, {}
      for j = 1, #chunk do at[j] = j end
      local function narrow(ok)
        local kept, kept_at = {}, {}
        for j = 1, #left do
          if ok[j] then
            kept[#kept + 1] = left[j]
            kept_at[#kept_at + 1] = at[j]
          end
        end
        left, at = kept, kept_at
      end
      -- Exact sets, the common case, without the `ok` table of `narrow`.
      for _, key in ipairs(single) do
        if #left == 0 then break end
        local flags = redis.call('SMISMEMBER', key, unpack(left))
        local kept, kept_at = {}, {}
        for j = 1, #left do
          if flags[j] == 1 then
            kept[#kept + 1] = left[j]
            kept_at[#kept_at + 1] = at[j]
          end
        end
        left, at = kept, kept_at
      end
      for _, keys in ipairs(multi) do
        if #left == 0 then break end
        local ok = {}
        for _, key in ipairs(keys) do
          local flags = redis.call('SMISMEMBER', key, unpack(left))
          for j = 1, #left do if flags[j] == 1 then ok[j] = true end end
        end
        narrow(ok)
      end
      for _, r in ipairs(others) do
        if #left == 0 then break end
        local scores = redis.call('ZMSCORE', r.key, unpack(left))
        local ok = {}
        for j = 1, #left do ok[j] = inside(num(scores[j]), r) end
        narrow(ok)
      end
      local ok = {}
      for j = 1, #at do ok[at[j]] = true end
      return ok
    end)
    return {total, slice(found, offset)}
  end
end

-- Materialize the candidates.
local C
local first_multi = 1
if #single == 1 then C = redis.call('SMEMBERS', single[1])
elseif #single > 1 then C = redis.call('SINTER', unpack(single))
elseif #multi > 0 then C = redis.call('SUNION', unpack(multi[1])); first_multi = 2
else
  local best, bestn = nil, nil
  local candidates = {}
  for _, r in ipairs(others) do candidates[#candidates + 1] = r end
  if orange then candidates[#candidates + 1] = orange end
  for _, r in ipairs(candidates) do
    local count = redis.call('ZCOUNT', r.key, lo(r), hi(r))
    if best == nil or count < bestn then best, bestn = r, count end
  end
  C = redis.call('ZRANGEBYSCORE', best.key, lo(best), hi(best))
end
for g = first_multi, #multi do
  if #C == 0 then break end
  local ok = {}
  for _, key in ipairs(multi[g]) do
    local flags = chunked('SMISMEMBER', key, C)
    for j = 1, #C do if flags[j] == 1 then ok[j] = true end end
  end
  C = filter(C, ok)
end
local checks = {}
for _, r in ipairs(others) do checks[#checks + 1] = r end
if orange then checks[#checks + 1] = orange end
for _, r in ipairs(checks) do
  if #C == 0 then break end
  local scores = chunked('ZMSCORE', r.key, C)
  local ok = {}
  for j = 1, #C do ok[j] = inside(num(scores[j]), r) end
  C = filter(C, ok)
end
if total == nil then remember(#C) end
total = #C
if limit == 0 or offset >= total then return {total, {}} end

-- Order them: walk the order's sorted set when the page comes early in it,
-- else sort.
local need = offset + limit
local n = redis.call('ZCARD', okey)
if limit >= 0 and need * n < total * total then
  local inC = {}
  for j = 1, #C do inC[C[j]] = true end
  local found = walk(need, math.ceil(need * n / total * 1.2) + 16, function(chunk)
    local ok = {}
    for j = 1, #chunk do ok[j] = inC[chunk[j]] == true end
    return ok
  end)
  return {total, slice(found, offset)}
end
if okey == all then
  if desc then table.sort(C, function(a, b) return a > b end) else table.sort(C) end
else
  local scores = chunked('ZMSCORE', okey, C)
  local keyed = {}
  for j = 1, #C do keyed[j] = {C[j], num(scores[j]) or math.huge} end
  if desc then
    table.sort(keyed, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] > b[1] end)
  else
    table.sort(keyed, function(a, b) if a[2] ~= b[2] then return a[2] < b[2] end return a[1] < b[1] end)
  end
  for j = 1, #keyed do C[j] = keyed[j][1] end
end
return {total, slice(C, offset)}
"
        .replace("COUNTS_MAX", &COUNTS_MAX.to_string()),
    )
});

/// The `EVALSHA` of [`UNLESS_UNCHANGED`] as one command.
fn unless_unchanged_cmd(
    [warm, order]: &[&str; 2],
    version: &str,
    known: &Bytes,
    bounds: Option<&[String; 2]>,
    page: &[String],
) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(UNLESS_UNCHANGED.get_hash())
        .arg(3)
        .arg(*warm)
        .arg(*order)
        .arg(version)
        .arg(&known[..]);
    match bounds {
        Some([lo, hi]) => cmd.arg(lo).arg(hi),
        None => cmd.arg("").arg(""),
    };
    cmd.arg(page);
    cmd
}

/// The page [`UNLESS_UNCHANGED`] replied: `None` when the index is not
/// marked warm.
fn unless_unchanged_page(
    reply: Option<Vec<redis::Value>>,
) -> Result<Option<IndexPage>, StoreError> {
    let Some(reply) = reply else {
        return Ok(None);
    };
    let protocol = |e: redis::ParsingError| StoreError::Protocol(e.to_string());
    let mut reply = reply.into_iter();
    let total: u64 =
        redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil)).map_err(protocol)?;
    let version: Option<Bytes> =
        redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil)).map_err(protocol)?;
    Ok(Some(match (reply.next(), version) {
        (None, Some(version)) => IndexPage::unchanged(total, version),
        (members, version) => {
            let members: Vec<String> =
                redis::from_redis_value(members.unwrap_or(redis::Value::Nil)).map_err(protocol)?;
            IndexPage::new(members, total).at(version)
        }
    }))
}

/// The count's bounds of an order-only `query` (none: `ZCARD`) and
/// `ZRANGE`'s arguments after the key; `range` is its range of the order.
fn zrange_args(
    query: &IndexQuery,
    range: Option<&ScoreRange>,
) -> (Option<[String; 2]>, Vec<String>) {
    match range {
        None => {
            let start = i64::try_from(query.offset).unwrap_or(i64::MAX);
            // Ranks are inclusive; a limit of 0 asks for an empty range
            // (a start past the stop), never for `stop = start - 1`,
            // which is -1 (the last member) when the offset is 0.
            let (start, stop) = match query.limit {
                None => (start, -1),
                Some(0) => (1, 0),
                Some(limit) => {
                    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                    (start, start.saturating_add(limit - 1))
                }
            };
            let mut page = vec![start.to_string(), stop.to_string()];
            if query.descending {
                page.push("REV".to_owned());
            }
            (None, page)
        }
        Some(range) => {
            let (lo, hi) = (
                score_bound(range.min, "-inf"),
                score_bound(range.max, "+inf"),
            );
            // `REV` takes the bounds high first. A negative count is
            // every member past the offset; a count of 0, none.
            let count = query
                .limit
                .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
            let mut page = if query.descending {
                vec![
                    hi.clone(),
                    lo.clone(),
                    "BYSCORE".to_owned(),
                    "REV".to_owned(),
                ]
            } else {
                vec![lo.clone(), hi.clone(), "BYSCORE".to_owned()]
            };
            page.extend([
                "LIMIT".to_owned(),
                query.offset.to_string(),
                count.to_string(),
            ]);
            (Some([lo, hi]), page)
        }
    }
}

/// `Some` when `query`'s only filter is at most one range, of the sorted
/// set it orders by: `Some(None)` for none, `Some(Some(range))` for one.
/// The query script reads such a page from that sorted set alone.
fn order_range(query: &IndexQuery) -> Option<Option<&ScoreRange>> {
    match query.ranges.as_slice() {
        [] => Some(None),
        [range] if query.order.as_deref() == Some(range.zset.as_str()) => Some(Some(range)),
        _ => None,
    }
}

/// A score bound as `ZRANGE ... BYSCORE` and `ZCOUNT` take it: `(` before
/// an excluded one.
fn score_bound(bound: std::ops::Bound<f64>, unbounded: &str) -> String {
    match bound_args(bound, unbounded) {
        (score, "1") => format!("({score}"),
        (score, _) => score,
    }
}

/// A bound as the query script reads it: the number and whether it is
/// exclusive.
fn bound_args(bound: std::ops::Bound<f64>, unbounded: &str) -> (String, &'static str) {
    match bound {
        std::ops::Bound::Unbounded => (unbounded.to_owned(), "0"),
        std::ops::Bound::Included(v) => (score_arg(v), "0"),
        std::ops::Bound::Excluded(v) => (score_arg(v), "1"),
    }
}

impl RedisStore {
    pub(super) async fn lease_index(
        &self,
        prefix: &str,
        members: &[String],
        token: &[u8],
    ) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("{prefix}lease"));
        for member in members {
            cmd.arg(member).arg(token);
        }
        self.query::<i64>(&cmd).await.map(|_| ())
    }

    pub(super) async fn apply_index(
        &self,
        prefix: &str,
        token: &[u8],
        updates: &[IndexUpdate],
    ) -> Result<Vec<bool>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = APPLY.prepare_invoke();
        invocation
            .key(format!("{prefix}rec"))
            .arg(prefix)
            .arg(token)
            .arg(&crate::marker::unique()[..]);
        for update in updates {
            invocation.arg(&update.member);
            match &update.record {
                Some(record) => {
                    let zsets: Vec<&str> = record.scores.iter().map(|(z, _)| z.as_str()).collect();
                    let json = serde_json::to_string(&(&record.sets, zsets))
                        .map_err(|e| StoreError::Protocol(e.to_string()))?;
                    invocation.arg(json).arg(record.scores.len());
                    for (_, score) in &record.scores {
                        invocation.arg(score_arg(*score));
                    }
                }
                None => {
                    invocation.arg("").arg(0);
                }
            }
        }
        let applied = self.invoke::<Vec<i64>>(&invocation).await?;
        if applied.len() != updates.len() {
            return Err(StoreError::Protocol(format!(
                "expected {} replies from the index script, got {}",
                updates.len(),
                applied.len()
            )));
        }
        Ok(applied.into_iter().map(|a| a != 0).collect())
    }

    pub(super) async fn query_index(
        &self,
        prefix: &str,
        query: &IndexQuery,
    ) -> Result<Option<IndexPage>, StoreError> {
        if query.groups.is_empty()
            && order_range(query).is_some()
            && matches!(self.connection, super::Connection::Single(_))
        {
            return self.order_only_page(prefix, query).await;
        }
        let mut invocation = QUERY.prepare_invoke();
        invocation
            .key(format!("{prefix}all"))
            .arg(prefix)
            .arg(query.order.as_deref().unwrap_or(""))
            .arg(if query.descending { "1" } else { "0" })
            .arg(query.offset)
            .arg(
                query
                    .limit
                    .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)),
            )
            .arg(if query.ignore_warm { "1" } else { "0" })
            .arg(query.groups.len());
        for group in &query.groups {
            invocation.arg(group.len());
            for set in group {
                invocation.arg(set);
            }
        }
        invocation.arg(query.ranges.len());
        for range in &query.ranges {
            let (min, min_excluded) = bound_args(range.min, "-inf");
            let (max, max_excluded) = bound_args(range.max, "+inf");
            invocation
                .arg(&range.zset)
                .arg(min)
                .arg(min_excluded)
                .arg(max)
                .arg(max_excluded);
        }
        let reply = self
            .invoke::<Option<(u64, Vec<String>)>>(&invocation)
            .await?;
        Ok(reply.map(|(total, members)| IndexPage::new(members, total)))
    }
}

impl RedisStore {
    /// A page with no filter but a range of its own order, in that order
    /// (a plain listing, or "published by now, newest first"): what the
    /// query script's first branch does, as one transaction of plain
    /// commands instead (`EXISTS` of the warm mark, `ZCARD` or `ZCOUNT`,
    /// `ZRANGE` by rank or by score). Same page, same count, same
    /// atomicity; the script spends about 30 us of server CPU on a page of
    /// 100 (mostly turning its members into a Lua table and back), the
    /// transaction a few. Single server only: the cluster keeps the script.
    ///
    /// With a near cache, a page without a range is kept in its tier like
    /// an entry: read over the tracking connection (so Redis tracks the
    /// warm mark and the sorted set, and pushes when either changes),
    /// admitted only if neither key was evicted meanwhile, and served while
    /// neither is. A query that ignores the warm mark (the cache's warming)
    /// is never kept, nor one with a range: its bound is often "now", new
    /// on every request, and each would be a page of its own.
    async fn order_only_page(
        &self,
        prefix: &str,
        query: &IndexQuery,
    ) -> Result<Option<IndexPage>, StoreError> {
        let range = order_range(query).flatten();
        let warm = format!("{prefix}{WARM_SUFFIX}");
        let order = format!("{prefix}{}", query.order.as_deref().unwrap_or("all"));
        let keys = [warm.as_str(), order.as_str()];
        // A near hit first, before anything is built for the read.
        let cached = self
            .near
            .as_ref()
            .filter(|_| !query.ignore_warm && range.is_none());
        let slot = cached.map(|tier| {
            let (descending, offset) = (query.descending, query.offset);
            let slot = near::page_slot(&warm, &order, descending, offset, query.limit);
            (tier, slot)
        });
        if let Some((tier, slot)) = &slot
            && let Some(page) = tier.page(slot, keys)
        {
            return Ok(Some(page));
        }
        let (bounds, page) = zrange_args(query, range);
        if slot.is_none()
            && let Some(known) = &query.known
        {
            let version = format!("{prefix}{VERSION_SUFFIX}");
            return self
                .unless_unchanged(&keys, &version, known, bounds.as_ref(), &page)
                .await;
        }
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("EXISTS").arg(&warm);
        match &bounds {
            None => pipe.cmd("ZCARD").arg(&order),
            Some([lo, hi]) => pipe.cmd("ZCOUNT").arg(&order).arg(lo).arg(hi),
        };
        let listed = |warm: bool| warm || query.ignore_warm;
        if let Some((tier, slot)) = &slot {
            pipe.cmd("ZRANGE").arg(&order).arg(&page);
            if let Some(page) = tier.read_page_through(slot, keys, &pipe).await {
                return Ok(page);
            }
            let (warm, total, members): (bool, u64, Vec<String>) = self.pipeline(&pipe).await?;
            return Ok(listed(warm).then(|| IndexPage::new(members, total)));
        }
        pipe.cmd("GET")
            .arg(format!("{prefix}{VERSION_SUFFIX}"))
            .cmd("ZRANGE")
            .arg(&order)
            .arg(&page);
        let (warm, total, version, members): (bool, u64, Option<Bytes>, Vec<String>) =
            self.pipeline(&pipe).await?;
        Ok(listed(warm).then(|| IndexPage::new(members, total).at(version)))
    }

    /// [`order_only_page`](Self::order_only_page) for a query whose page
    /// the caller read before at version `known`: while the index is still
    /// at that version, the reply is the count alone, and the caller's
    /// page stands (100 members a list need not send, parse and compare).
    /// Any change to the model's sets and sorted sets replaces the version
    /// in the same atomic step ([`APPLY`]); a version evicted or flushed is
    /// never equal to one read before, nor is one read from an index that
    /// was emptied since (a sorted set evicted, say: its count is 0).
    async fn unless_unchanged(
        &self,
        keys: &[&str; 2],
        version: &str,
        known: &Bytes,
        bounds: Option<&[String; 2]>,
        page: &[String],
    ) -> Result<Option<IndexPage>, StoreError> {
        let cmd = unless_unchanged_cmd(keys, version, known, bounds, page);
        let reply = self.evalsha(&UNLESS_UNCHANGED, &cmd).await?;
        unless_unchanged_page(reply)
    }

    /// [`query_index`](Self::query_index) and a multi-get of `keys` (each
    /// at most [`MAX_KEYS_PER_REQUEST`](super::MAX_KEYS_PER_REQUEST), in
    /// key order, prefixed) in one pipeline, when the query is an
    /// order-only page read before at a known version on a single server
    /// without a near tier (a list's repeat, `cache/prefetch.rs`): one
    /// request on the connection rather than two, which cost about 20 us
    /// more (two messages to its writer, two replies to wake on). `None`
    /// when the query is not one: the caller sends the two as before.
    pub(super) async fn query_index_and_get(
        &self,
        prefix: &str,
        query: &IndexQuery,
        keys: Keys<'_>,
    ) -> Option<Result<(Option<IndexPage>, Result<Vec<Option<Bytes>>, StoreError>), StoreError>>
    {
        let known = query.known.as_ref()?;
        let range = order_range(query)?.cloned();
        if !query.groups.is_empty()
            || query.ignore_warm
            || self.near.is_some()
            || !matches!(self.connection, super::Connection::Single(_))
            || keys.len() == 0
            || keys.len() > super::MAX_KEYS_PER_REQUEST
        {
            return None;
        }
        let mut mget = Cmd::with_capacity(keys.len() + 1, keys.total_size() + 4);
        mget.arg("MGET");
        for i in 0..keys.len() {
            mget.arg(keys.arg(i));
        }
        let (bounds, page) = zrange_args(query, range.as_ref());
        let warm = format!("{prefix}{WARM_SUFFIX}");
        let order = format!("{prefix}{}", query.order.as_deref().unwrap_or("all"));
        let version = format!("{prefix}{VERSION_SUFFIX}");
        let keys_of_index = [warm.as_str(), order.as_str()];
        let cmd = || unless_unchanged_cmd(&keys_of_index, &version, known, bounds.as_ref(), &page);
        Some(self.query_and_mget(cmd, mget, keys.len()).await)
    }

    /// Sends `query` (an `EVALSHA` of [`UNLESS_UNCHANGED`]) and `mget` in
    /// one pipeline. The multi-get's reply stands on its own: when the
    /// server lost the script (`NOSCRIPT`), it is loaded and the query
    /// alone sent again.
    async fn query_and_mget(
        &self,
        query: impl Fn() -> Cmd,
        mget: Cmd,
        keys: usize,
    ) -> Result<(Option<IndexPage>, Result<Vec<Option<Bytes>>, StoreError>), StoreError> {
        let protocol = |e: redis::ParsingError| StoreError::Protocol(e.to_string());
        let mut pipe = redis::pipe();
        pipe.ignore_errors().add_command(query()).add_command(mget);
        let replies: Vec<redis::Value> = self.pipeline(&pipe).await?;
        let [queried, read] = <[redis::Value; 2]>::try_from(replies)
            .map_err(|replies| super::reply_length(2, replies.len()))?;
        let values = match read {
            redis::Value::ServerError(error) => {
                Err(super::store_error(redis::RedisError::from(error)))
            }
            read => redis::from_redis_value::<Vec<Option<Bytes>>>(read)
                .map_err(protocol)
                .and_then(|values| {
                    if values.len() == keys {
                        Ok(values)
                    } else {
                        Err(super::reply_length(keys, values.len()))
                    }
                }),
        };
        let reply: Option<Vec<redis::Value>> = match queried {
            redis::Value::ServerError(error) if error.code() == "NOSCRIPT" => {
                self.evalsha(&UNLESS_UNCHANGED, &query()).await?
            }
            redis::Value::ServerError(error) => {
                return Err(super::store_error(redis::RedisError::from(error)));
            }
            queried => redis::from_redis_value(queried).map_err(protocol)?,
        };
        Ok((unless_unchanged_page(reply)?, values))
    }
}
