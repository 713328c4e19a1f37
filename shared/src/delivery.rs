//! A webhook endpoint's delivery queue, as the daemons' workers use it: at least once, in order
//! per endpoint and session, retried with backoff, then dead-lettered.
//!
//! - **Queueing** ([`poll`]): one script reads the organization's log through the endpoint's
//!   consumer group and queues each admitted event on the endpoint's list for its session, so
//!   reading and queueing happen together (two workers cannot interleave batches) and the
//!   group's position is exactly what was queued.
//! - **Delivering** ([`claim`], [`settle`]): a worker claims a session's first event (its score
//!   in the due set becomes the claim's lapse time), POSTs it, and settles: delivered or given
//!   up on, the event leaves the queue and the next one is claimed in the same script; failed,
//!   the session is due again after a backoff. A worker that dies mid-delivery loses nothing: its
//!   claim lapses and another delivers the event again. Only the claim's holder may settle.

use crate::redis::{Redis, RedisError, Reply};
use crate::{args, keys};

/// Lua shared by the scripts: Redis's clock in ms, and claiming a session's first event
/// (KEYS[1] the endpoint, KEYS[2] its due set, KEYS[3] its heads; `previous_secret` the key of
/// the rotated-out secret, while its overlap lasts) for the worker holding `token`.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function claim(session, queue, token, claim_ms, now, previous_secret)
  local cfg = redis.call('HMGET', KEYS[1], 'enabled', 'url', 'secret')
  if cfg[1] ~= '1' then return nil end
  local head = redis.call('LINDEX', queue, 0)
  if not head then
    redis.call('ZREM', KEYS[2], session)
    return nil
  end
  redis.call('ZADD', KEYS[2], now + claim_ms, session)
  redis.call('HSET', KEYS[3], 'claim:' .. session, token)
  local previous = redis.call('GET', previous_secret)
  if not previous then
    -- An overlap begun before the previous secret had a key of its own: honoured until it
    -- ends, then deleted.
    local kept = redis.call('HMGET', KEYS[1], 'previousSecret', 'previousSecretUntil')
    if kept[1] and tonumber(kept[2] or '0') > now then
      previous = kept[1]
    elseif kept[1] then
      redis.call('HDEL', KEYS[1], 'previousSecret', 'previousSecretUntil')
    end
  end
  return {'attempt', head, tonumber(redis.call('HGET', KEYS[3], 'tries:' .. session) or '0'), cfg[2], cfg[3], previous or ''}
end
"#;

/// An endpoint in the platform-wide index: (organization, endpoint id).
pub fn parse_index_member(member: &str) -> Option<(String, String)> {
    serde_json::from_str(member).ok()
}

/// Every endpoint of every organization.
pub async fn endpoints<R: Redis>(r: &R) -> Result<Vec<(String, String)>, RedisError> {
    let members = r.execute("SMEMBERS", args![keys::webhook_endpoints()]).await?;
    Ok(members.into_iter().filter_map(Reply::into_string).filter_map(|m| parse_index_member(&m)).collect())
}

/// How many endpoints there are, platform-wide (cheap: a worker compares it with what it knows).
pub async fn endpoint_count<R: Redis>(r: &R) -> Result<u64, RedisError> {
    Ok(crate::redis::first(r, "SCARD", args![keys::webhook_endpoints()]).await?.as_int().unwrap_or(0).max(0) as u64)
}

/// What a [`poll`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Polled {
    /// The endpoint is gone or disabled: nothing queued, nothing due.
    pub idle: bool,
    /// The read filled its batch: more may be waiting in the log.
    pub more: bool,
    /// Sessions whose first event is due now.
    pub due: Vec<String>,
    /// Until the next session not due yet comes due (a retry, a lapsing claim), if any.
    pub wait_ms: Option<u64>,
}

/// Limits a worker applies to every endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Log entries read per poll.
    pub batch: u32,
    /// Events queued per endpoint at most; past it an event is dead-lettered as `backlog_full`.
    pub backlog_max: u64,
    /// Due sessions a poll returns at most.
    pub due_max: u32,
}

/// Queues what the endpoint's group has not read yet (the admitted events: its types and
/// sessions), and lists the sessions due.
pub async fn poll<R: Redis>(r: &R, org: &str, id: &str, limits: Limits) -> Result<Polled, RedisError> {
    const POLL: &str = r#"
local cfg = redis.call('HMGET', KEYS[1], 'enabled', 'types', 'sessions')
if cfg[1] ~= '1' then return {-1} end
local now = now_ms()
local function split(text)
  local items = {}
  for item in string.gmatch(text or '', '[^,]+') do table.insert(items, item) end
  return items
end
local types, sessions = split(cfg[2]), {}
for _, s in ipairs(split(cfg[3])) do sessions[s] = true end
local every_session = next(sessions) == nil
local function admits(kind, session)
  if not every_session and not sessions[session] then return false end
  if #types == 0 then return true end
  for _, pattern in ipairs(types) do
    if string.sub(pattern, -1) == '*' then
      if string.sub(kind, 1, #pattern - 1) == string.sub(pattern, 1, -2) then return true end
    elseif pattern == kind then
      return true
    end
  end
  return false
end
local ok, read = pcall(redis.call, 'XREADGROUP', 'GROUP', ARGV[1], 'workers', 'COUNT', ARGV[3], 'NOACK', 'STREAMS', KEYS[2], '>')
if not ok then
  -- The group is gone with the data it lived in (a Redis that lost its data): start again at the end.
  redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[1], '$', 'MKSTREAM')
  read = false
end
local more = 0
if read then
  local entries = read[1][2]
  if #entries >= tonumber(ARGV[3]) then more = 1 end
  for _, entry in ipairs(entries) do
    local json = entry[2][2]
    local decoded, event = pcall(cjson.decode, json)
    if decoded and type(event) == 'table' and type(event.type) == 'string' and type(event.sessionId) == 'string'
        and admits(event.type, event.sessionId) then
      local s = event.sessionId
      if redis.call('HINCRBY', KEYS[1], 'backlog', 1) > tonumber(ARGV[4]) then
        redis.call('HINCRBY', KEYS[1], 'backlog', -1)
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'session', s, 'event', json, 'reason', 'backlog_full', 'attempts', 0, 'failedAt', now)
      else
        redis.call('RPUSH', ARGV[2] .. s, json)
        redis.call('ZADD', KEYS[3], 'NX', now, s)
      end
    end
  end
end
local due = redis.call('ZRANGE', KEYS[3], '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[6])
local later = redis.call('ZRANGE', KEYS[3], '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
local wait = -1
if later[2] then wait = tonumber(later[2]) - now end
return {more, wait, unpack(due)}
"#;
    let script = format!("{PRELUDE}{POLL}");
    let argv = args![script, 4, keys::webhook(org, id), keys::org_events(org), keys::webhook_due(org, id), keys::webhook_dead_letters(org, id),
        keys::webhook_group(id), keys::webhook_queue_prefix(org, id), limits.batch as i64, limits.backlog_max as i64,
        crate::webhook::DEAD_LETTERS_MAX as i64, limits.due_max as i64];
    let mut replies = r.execute("EVAL", argv).await?.into_iter();
    let more = replies.next().and_then(|r| r.as_int()).unwrap_or(-1);
    if more < 0 {
        return Ok(Polled { idle: true, ..Polled::default() });
    }
    let wait = replies.next().and_then(|r| r.as_int()).unwrap_or(-1);
    Ok(Polled {
        idle: false,
        more: more == 1,
        wait_ms: u64::try_from(wait).ok(),
        due: replies.filter_map(Reply::into_string).collect(),
    })
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub org: String,
    pub webhook_id: String,
    pub session_id: String,
    /// The event's JSON, exactly as logged: the request body.
    pub event: String,
    /// Attempts that failed before this one.
    pub failures: u32,
    pub url: String,
    pub secret: String,
    /// The secret before a rotation, while it still signs too.
    pub previous_secret: Option<String>,
}

/// Claims the session's first event for the worker holding `token`, if it is due and no other
/// worker holds it; the claim lapses after `claim_ms`.
pub async fn claim<R: Redis>(r: &R, org: &str, id: &str, session_id: &str, token: &str, claim_ms: u64) -> Result<Option<Attempt>, RedisError> {
    const CLAIM: &str = r#"
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > now then return {'busy'} end
return claim(ARGV[1], ARGV[2] .. ARGV[1], ARGV[3], tonumber(ARGV[4]), now, KEYS[4]) or {'none'}
"#;
    let script = format!("{PRELUDE}{CLAIM}");
    let argv = args![script, 4, keys::webhook(org, id), keys::webhook_due(org, id), keys::webhook_heads(org, id), keys::webhook_previous_secret(org, id),
        session_id, keys::webhook_queue_prefix(org, id), token, claim_ms as i64];
    Ok(attempt(r.execute("EVAL", argv).await?, org, id, session_id))
}

fn attempt(replies: Vec<Reply>, org: &str, id: &str, session_id: &str) -> Option<Attempt> {
    let mut replies = replies.into_iter();
    if replies.next()?.into_string()? != "attempt" {
        return None;
    }
    let event = replies.next()?.into_string()?;
    let failures = replies.next()?.as_int()?.clamp(0, u32::MAX as i64) as u32;
    let url = replies.next()?.into_string()?;
    let secret = replies.next()?.into_string()?;
    let previous_secret = replies.next()?.into_string().filter(|s| !s.is_empty());
    Some(Attempt { org: org.to_owned(), webhook_id: id.to_owned(), session_id: session_id.to_owned(), event, failures, url, secret, previous_secret })
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Failed with this reason; tried again after `retry_in_ms` unless the event has been
    /// failing for the whole retry period, in which case it is dead-lettered.
    Failed { reason: String, retry_in_ms: u64 },
}

/// How long the worker may take over an attempt, and how long an event may keep failing.
#[derive(Debug, Clone, Copy)]
pub struct Settling {
    pub claim_ms: u64,
    pub retry_period_ms: u64,
}

/// Records the outcome (health included) and, when the event left the queue, claims the
/// session's next one for the same worker. `None`: nothing more to do for this session now
/// (empty, retrying later, disabled, or the claim was no longer this worker's).
pub async fn settle<R: Redis>(r: &R, attempt: &Attempt, token: &str, outcome: &Outcome, settling: Settling) -> Result<Option<Attempt>, RedisError> {
    const SETTLE: &str = r#"
local s = ARGV[1]
local queue = ARGV[2] .. s
if redis.call('HGET', KEYS[3], 'claim:' .. s) ~= ARGV[3] then return {'stale'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local now = now_ms()
local function take()
  local removed = 1
  if redis.call('LINDEX', queue, 0) == ARGV[5] then redis.call('LPOP', queue) else removed = redis.call('LREM', queue, 1, ARGV[5]) end
  if removed > 0 then redis.call('HINCRBY', KEYS[1], 'backlog', -1) end
  redis.call('HDEL', KEYS[3], 'tries:' .. s, 'since:' .. s)
end
if ARGV[4] == 'ok' then
  take()
  redis.call('HSET', KEYS[1], 'lastSuccessAt', now)
elseif redis.call('LINDEX', queue, 0) ~= ARGV[5] then
  -- Redelivered dead letters went in front while this was out: they go first, and this
  -- failure is not theirs to count.
  redis.call('HSET', KEYS[1], 'lastFailureAt', now, 'lastFailure', ARGV[6])
else
  local tries = redis.call('HINCRBY', KEYS[3], 'tries:' .. s, 1)
  local since = tonumber(redis.call('HGET', KEYS[3], 'since:' .. s) or now)
  redis.call('HSET', KEYS[1], 'lastFailureAt', now, 'lastFailure', ARGV[6])
  if now - since >= tonumber(ARGV[8]) then
    take()
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'session', s, 'event', ARGV[5], 'reason', ARGV[6], 'attempts', tries, 'failedAt', now)
  else
    redis.call('HSET', KEYS[3], 'since:' .. s, since)
    redis.call('HDEL', KEYS[3], 'claim:' .. s)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), s)
    return {'retry'}
  end
end
redis.call('HDEL', KEYS[3], 'claim:' .. s)
redis.call('ZADD', KEYS[2], now, s)
return claim(s, queue, ARGV[3], tonumber(ARGV[10]), now, KEYS[5]) or {'done'}
"#;
    let script = format!("{PRELUDE}{SETTLE}");
    let (org, id) = (attempt.org.as_str(), attempt.webhook_id.as_str());
    let (verdict, reason, retry_in_ms) = match outcome {
        Outcome::Delivered => ("ok", "", 0),
        Outcome::Failed { reason, retry_in_ms } => ("failed", reason.as_str(), *retry_in_ms),
    };
    let argv = args![script, 5, keys::webhook(org, id), keys::webhook_due(org, id), keys::webhook_heads(org, id), keys::webhook_dead_letters(org, id),
        keys::webhook_previous_secret(org, id), &attempt.session_id, keys::webhook_queue_prefix(org, id), token, verdict, &attempt.event, reason, retry_in_ms as i64,
        settling.retry_period_ms as i64, crate::webhook::DEAD_LETTERS_MAX as i64, settling.claim_ms as i64];
    Ok(self::attempt(r.execute("EVAL", argv).await?, org, id, &attempt.session_id))
}

/// The pause before attempt `failures + 1`: `base_ms` doubled per failure, at most `max_ms`,
/// then jittered by ±20% (`jitter` in 0..1) so failing endpoints do not retry in lockstep.
pub fn retry_delay(failures: u32, base_ms: u64, max_ms: u64, jitter: f64) -> u64 {
    let doubled = base_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(40));
    let capped = doubled.min(max_ms) as f64;
    (capped * (0.8 + 0.4 * jitter.clamp(0.0, 1.0))).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap_with_jitter() {
        assert_eq!(retry_delay(1, 5_000, 3_600_000, 0.5), 5_000);
        assert_eq!(retry_delay(2, 5_000, 3_600_000, 0.5), 10_000);
        assert_eq!(retry_delay(5, 5_000, 3_600_000, 0.5), 80_000);
        assert_eq!(retry_delay(30, 5_000, 3_600_000, 0.5), 3_600_000);
        assert_eq!(retry_delay(1, 5_000, 3_600_000, 0.0), 4_000);
        assert_eq!(retry_delay(1, 5_000, 3_600_000, 1.0), 6_000);
        assert_eq!(retry_delay(u32::MAX, 5_000, 3_600_000, 0.5), 3_600_000, "no overflow");
    }

    #[test]
    fn index_members_name_an_organization_and_an_endpoint() {
        let member = crate::webhook::index_member("acme", "01J");
        assert_eq!(parse_index_member(&member), Some(("acme".to_owned(), "01J".to_owned())));
        assert_eq!(parse_index_member("garbage"), None);
    }
}
