//! Webhook endpoints: where an organization wants its events POSTed, signed the Standard
//! Webhooks way. This is the resource the API manages; [`crate::delivery`] is the queue the
//! daemons' workers deliver from.
//!
//! An endpoint is a hash (settings, secrets, health) plus a consumer group on the organization's
//! event log, created with it at the log's end: an endpoint receives what is logged after it
//! was registered, and a replay moves the group back to any retained position.

use crate::answer::Page;
use crate::redis::{Redis, Reply, first, hash_fields};
use crate::{ApiError, ErrorCode, args, keys, validate};
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

/// Signing secrets are `whsec_` and the base64 of 32 random bytes, as the specification shows them.
pub const SECRET_PREFIX: &str = "whsec_";
pub const URL_MAX_CHARS: usize = 2_000;
pub const EVENTS_MAX: usize = 20;
pub const SESSIONS_MAX: usize = 100;
/// Dead letters kept per endpoint (the oldest go first past it).
pub const DEAD_LETTERS_MAX: u64 = 10_000;

/// A fresh signing secret, shown once.
pub fn mint_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The endpoint as the API shows it. `secret` only in the answers that mint one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// Event types or families (`message.*`) delivered; empty: every event.
    pub events: Vec<String>,
    /// Sessions whose events are delivered; empty: every session's.
    pub sessions: Vec<String>,
    pub enabled: bool,
    pub description: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// How deliveries to the endpoint go.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    /// Why the last attempt failed (`status 500`, `timeout`, …).
    pub last_failure: Option<String>,
    /// Events queued, not yet delivered.
    pub backlog: u64,
    pub dead_letters: u64,
}

/// The settings a create or an update gives; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub sessions: Option<Vec<String>>,
    pub enabled: Option<bool>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
}

const FIELDS: &[&str] = &["url", "events", "sessions", "enabled", "description"];

impl Settings {
    /// A create's body: `url` required, the rest defaulted (every event, every session, enabled).
    pub fn for_create(body: &[u8], allow_private: bool) -> Result<Settings, ApiError> {
        let settings = Settings::parse(body, allow_private)?;
        if settings.url.is_none() {
            return Err(ApiError::invalid_field("url", "is required"));
        }
        Ok(settings)
    }

    /// An update's body: any of the fields, at least one.
    pub fn for_update(body: &[u8], allow_private: bool) -> Result<Settings, ApiError> {
        let settings = Settings::parse(body, allow_private)?;
        if settings == Settings::default() {
            return Err(ApiError::invalid_field("body", "names nothing to change").with_detail("allowed", FIELDS.to_vec()));
        }
        Ok(settings)
    }

    fn parse(body: &[u8], allow_private: bool) -> Result<Settings, ApiError> {
        let body = validate::json_object(body)?;
        validate::only_known_fields(&body, FIELDS)?;
        let present = |field: &str| body.get(field).is_some_and(|v| !v.is_null());
        Ok(Settings {
            url: body.get("url").filter(|v| !v.is_null()).map(|v| endpoint_url(v, allow_private)).transpose()?,
            events: present("events").then(|| events(&body)).transpose()?,
            sessions: present("sessions").then(|| sessions(&body)).transpose()?,
            enabled: present("enabled").then(|| validate::optional_bool(&body, "enabled", true)).transpose()?,
            description: body.contains_key("description").then(|| validate::optional_label(&body, "description")).transpose()?,
        })
    }

    /// The settings as hash fields (lists as comma lists, which the delivery script splits).
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::new();
        if let Some(url) = &self.url {
            fields.push(("url", url.clone()));
        }
        if let Some(events) = &self.events {
            fields.push(("types", events.join(",")));
        }
        if let Some(sessions) = &self.sessions {
            fields.push(("sessions", sessions.join(",")));
        }
        if let Some(enabled) = self.enabled {
            fields.push(("enabled", if enabled { "1" } else { "0" }.to_owned()));
        }
        if let Some(description) = &self.description {
            fields.push(("description", description.clone().unwrap_or_default()));
        }
        fields
    }
}

/// An absolute http(s) URL within the egress rule: an address inside the gateway's network is
/// refused here unless the operator allows it (names are checked where they are resolved, by
/// the daemon, on every delivery).
fn endpoint_url(value: &Value, allow_private: bool) -> Result<String, ApiError> {
    let bad = |reason: &str| ApiError::invalid_field("url", reason.to_owned());
    let text = value.as_str().ok_or_else(|| bad("must be a string"))?;
    if text.chars().count() > URL_MAX_CHARS {
        return Err(bad(&format!("must be at most {URL_MAX_CHARS} characters")));
    }
    let url = url::Url::parse(text).map_err(|e| bad(&format!("is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    let host = url.host_str().unwrap_or_default();
    if !allow_private && !crate::egress::host_is_public(host) {
        return Err(bad("points inside the gateway's network, which this gateway does not deliver to"));
    }
    Ok(url.to_string())
}

fn string_list(body: &Map<String, Value>, field: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let items = body.get(field).and_then(Value::as_array).ok_or_else(|| ApiError::invalid_field(field, "must be an array of strings"))?;
    if items.len() > max {
        return Err(ApiError::invalid_field(field, format!("must have at most {max} items")));
    }
    let mut list: Vec<String> = Vec::new();
    for item in items {
        let item = item.as_str().ok_or_else(|| ApiError::invalid_field(field, "must be an array of strings"))?;
        if !list.iter().any(|known| known == item) {
            list.push(item.to_owned());
        }
    }
    Ok(list)
}

/// Each an event type or family that exists (the event stream's rule).
fn events(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let events = string_list(body, "events", EVENTS_MAX)?;
    if let Some(unknown) = events.iter().find(|pattern| !crate::event::is_known_pattern(pattern)) {
        return Err(crate::event::unknown_pattern("events", unknown));
    }
    Ok(events)
}

fn sessions(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let sessions = string_list(body, "sessions", SESSIONS_MAX)?;
    if sessions.iter().any(|s| !validate::is_safe_id(s)) {
        return Err(ApiError::invalid_field("sessions", "must be session ids"));
    }
    Ok(sessions)
}

pub fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "webhook not found")
}

/// An id no endpoint could have is simply not found (and never reaches a key).
fn known_shape(id: &str) -> Result<(), ApiError> {
    if validate::is_safe_id(id) { Ok(()) } else { Err(not_found()) }
}

/// Registers an endpoint (at most `max` per organization: 409 past it) with a fresh secret, and
/// its consumer group at the log's end. The platform-wide index is written first: a worker
/// skips an entry whose endpoint does not exist.
pub async fn create<R: Redis>(r: &R, org: &str, settings: &Settings, max: u64) -> Result<Webhook, ApiError> {
    const CREATE: &str = r#"
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[3], '$', 'MKSTREAM')
return 1
"#;
    let id = ulid::Ulid::new().to_string();
    let now = crate::time::now_millis();
    let secret = mint_secret();
    let defaults = Settings { events: Some(Vec::new()), sessions: Some(Vec::new()), enabled: Some(true), description: Some(None), url: None };
    let mut argv = args![CREATE, 3, keys::webhook(org, &id), keys::org_webhooks(org), keys::org_events(org), &id, max as i64, keys::webhook_group(&id), now];
    for (field, value) in defaults.fields().into_iter().chain(settings.fields()) {
        argv.extend(args![field, value]);
    }
    argv.extend(args!["secret", &secret, "createdAt", now, "updatedAt", now, "backlog", 0]);
    r.execute("SADD", args![keys::webhook_endpoints(), index_member(org, &id)]).await?;
    if first(r, "EVAL", argv).await?.as_int() != Some(1) {
        r.execute("SREM", args![keys::webhook_endpoints(), index_member(org, &id)]).await?;
        return Err(ApiError::new(ErrorCode::Conflict, format!("this organization has {max} webhooks, the most it may have"))
            .with_detail("limit", max));
    }
    let mut webhook = get(r, org, &id).await?;
    webhook.secret = Some(secret);
    Ok(webhook)
}

/// The platform-wide index's entry for an endpoint.
pub fn index_member(org: &str, id: &str) -> String {
    serde_json::json!([org, id]).to_string()
}

pub async fn get<R: Redis>(r: &R, org: &str, id: &str) -> Result<Webhook, ApiError> {
    const READ: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, redis.call('XLEN', KEYS[2]))
return all
"#;
    known_shape(id)?;
    let replies = r.execute("EVAL", args![READ, 2, keys::webhook(org, id), keys::webhook_dead_letters(org, id)]).await?;
    let mut replies = replies.into_iter();
    let dead_letters = match replies.next() {
        Some(Reply::Int(n)) => n.max(0) as u64,
        _ => return Err(not_found()),
    };
    let fields = hash_fields(replies);
    let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
    let list = |name: &str| text(name).map(|v| v.split(',').map(str::to_owned).collect()).unwrap_or_default();
    Ok(Webhook {
        id: id.to_owned(),
        url: text("url").unwrap_or_default(),
        events: list("types"),
        sessions: list("sessions"),
        enabled: fields.get("enabled").is_some_and(|v| v == "1"),
        description: text("description"),
        created_at: number("createdAt").unwrap_or_default(),
        updated_at: number("updatedAt").unwrap_or_default(),
        health: Health {
            last_success_at: number("lastSuccessAt"),
            last_failure_at: number("lastFailureAt"),
            last_failure: text("lastFailure"),
            backlog: number("backlog").unwrap_or_default().max(0) as u64,
            dead_letters,
        },
        secret: None,
    })
}

/// The organization's endpoints, oldest first (there are few: the per-organization cap).
pub async fn list<R: Redis>(r: &R, org: &str) -> Result<Vec<Webhook>, ApiError> {
    let ids = r.execute("ZRANGE", args![keys::org_webhooks(org), 0, -1]).await?;
    let mut webhooks = Vec::new();
    for id in ids.into_iter().filter_map(Reply::into_string) {
        match get(r, org, &id).await {
            Ok(webhook) => webhooks.push(webhook),
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(webhooks)
}

pub async fn update<R: Redis>(r: &R, org: &str, id: &str, settings: &Settings) -> Result<Webhook, ApiError> {
    const UPDATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"#;
    known_shape(id)?;
    let mut argv = args![UPDATE, 1, keys::webhook(org, id)];
    for (field, value) in settings.fields() {
        argv.extend(args![field, value]);
    }
    argv.extend(args!["updatedAt", crate::time::now_millis()]);
    if first(r, "EVAL", argv).await?.as_int() != Some(1) {
        return Err(not_found());
    }
    get(r, org, id).await
}

/// Removes the endpoint, its queues, dead letters and consumer group; a worker delivering to it
/// at that moment finds it gone and records nothing.
pub async fn delete<R: Redis>(r: &R, org: &str, id: &str) -> Result<(), ApiError> {
    const DELETE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, session in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do redis.call('DEL', ARGV[3] .. session) end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[7])
redis.call('ZREM', KEYS[2], ARGV[1])
pcall(redis.call, 'XGROUP', 'DESTROY', KEYS[6], ARGV[2])
return 1
"#;
    known_shape(id)?;
    let argv = args![DELETE, 7, keys::webhook(org, id), keys::org_webhooks(org), keys::webhook_due(org, id), keys::webhook_heads(org, id),
        keys::webhook_dead_letters(org, id), keys::org_events(org), keys::webhook_previous_secret(org, id), id, keys::webhook_group(id), keys::webhook_queue_prefix(org, id)];
    if first(r, "EVAL", argv).await?.as_int() != Some(1) {
        return Err(not_found());
    }
    r.execute("SREM", args![keys::webhook_endpoints(), index_member(org, id)]).await?;
    Ok(())
}

/// Drops a deleted session's queued deliveries at every endpoint of its organization: the
/// events, the endpoint's backlog count for them, the session's place in the due set and its
/// claim and retry bookkeeping. A worker delivering its head at that moment settles nothing
/// (the event it held is gone from the queue).
pub async fn forget_session<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<(), ApiError> {
    const FORGET: &str = r#"
local queued = redis.call('LLEN', KEYS[4])
if queued > 0 and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'backlog', -queued) end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], 'claim:' .. ARGV[1], 'tries:' .. ARGV[1], 'since:' .. ARGV[1])
return queued
"#;
    let ids = r.execute("ZRANGE", args![keys::org_webhooks(org), 0, -1]).await?;
    for id in ids.into_iter().filter_map(Reply::into_string) {
        let queue = format!("{}{session_id}", keys::webhook_queue_prefix(org, &id));
        r.execute("EVAL", args![FORGET, 4, keys::webhook(org, &id), keys::webhook_due(org, &id), keys::webhook_heads(org, &id), queue, session_id]).await?;
    }
    Ok(())
}

/// What a rotation answers: the new secret, and until when the old one still signs too.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    pub secret: String,
    pub previous_secret_expires_at: i64,
}

/// A new secret; for `overlap_ms` every delivery carries a signature by each, so receivers can
/// switch without missing one.
pub async fn rotate<R: Redis>(r: &R, org: &str, id: &str, overlap_ms: u64) -> Result<Rotated, ApiError> {
    const ROTATE: &str = r#"
local old = redis.call('HGET', KEYS[1], 'secret')
if not old then return 0 end
redis.call('HSET', KEYS[1], 'secret', ARGV[1], 'updatedAt', ARGV[3])
redis.call('HDEL', KEYS[1], 'previousSecret', 'previousSecretUntil')
redis.call('SET', KEYS[2], old, 'PX', ARGV[2])
return 1
"#;
    known_shape(id)?;
    let now = crate::time::now_millis();
    let rotated = Rotated { secret: mint_secret(), previous_secret_expires_at: now + overlap_ms as i64 };
    let argv = args![ROTATE, 2, keys::webhook(org, id), keys::webhook_previous_secret(org, id), &rotated.secret, overlap_ms.max(1) as i64, now];
    match first(r, "EVAL", argv).await?.as_int() {
        Some(1) => Ok(rotated),
        _ => Err(not_found()),
    }
}

/// Puts every dead letter back in front of its session's queue, in their order, due now; returns
/// how many. One script for all of them (at most `DEAD_LETTERS_MAX`): moved in batches, a
/// worker could deliver a later batch, pushed in front, before an earlier one still waiting,
/// unless the sessions touched were held back from delivery until the last batch.
pub async fn redeliver<R: Redis>(r: &R, org: &str, id: &str) -> Result<u64, ApiError> {
    const REDELIVER: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local by_session, order, count = {}, {}, 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[3], '-', '+')) do
  local fields, session, event = entry[2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'session' then session = fields[i + 1] elseif fields[i] == 'event' then event = fields[i + 1] end
  end
  if session and event then
    if not by_session[session] then by_session[session] = {}; table.insert(order, session) end
    table.insert(by_session[session], event)
    count = count + 1
  end
end
for _, session in ipairs(order) do
  local events = by_session[session]
  for i = #events, 1, -1 do redis.call('LPUSH', ARGV[1] .. session, events[i]) end
  redis.call('HDEL', KEYS[4], 'tries:' .. session, 'since:' .. session)
  if not redis.call('HGET', KEYS[4], 'claim:' .. session) then redis.call('ZADD', KEYS[2], now, session) end
end
redis.call('HINCRBY', KEYS[1], 'backlog', count)
redis.call('DEL', KEYS[3])
return count
"#;
    known_shape(id)?;
    let argv = args![REDELIVER, 4, keys::webhook(org, id), keys::webhook_due(org, id), keys::webhook_dead_letters(org, id),
        keys::webhook_heads(org, id), keys::webhook_queue_prefix(org, id)];
    match first(r, "EVAL", argv).await?.as_int() {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(not_found()),
    }
}

/// Moves the endpoint's position in the log back (or forward) to just after `after`, so every
/// event logged since then is queued for it again (duplicates of what it already had included:
/// a replay is asked for). A position past the newest event replays nothing: the endpoint goes
/// on from the newest (set any further, it would skip what is logged next). Returns where the
/// endpoint goes on from, and the oldest position the log still holds.
pub async fn replay<R: Redis>(r: &R, org: &str, id: &str, after: &ReplayStart) -> Result<(String, Option<String>), ApiError> {
    const REPLAY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local at = ARGV[2]
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if newest then
  local function parts(id) local ms, seq = string.match(id, '^(%d+)-(%d+)$'); return tonumber(ms), tonumber(seq) end
  local ms, seq = parts(at)
  local last_ms, last_seq = parts(newest[1])
  if ms > last_ms or (ms == last_ms and seq > last_seq) then at = newest[1] end
else
  at = '0-0'
end
local ok = pcall(redis.call, 'XGROUP', 'SETID', KEYS[2], ARGV[1], at)
if not ok then redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[1], at, 'MKSTREAM') end
return at
"#;
    known_shape(id)?;
    let argv = args![REPLAY, 2, keys::webhook(org, id), keys::org_events(org), keys::webhook_group(id), &after.position];
    let Some(at) = first(r, "EVAL", argv).await?.into_string() else { return Err(not_found()) };
    Ok((at, crate::event_log::first_id(r, org).await?))
}

/// Where a replay starts: just after `position`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayStart {
    pub position: String,
}

/// Where a replay starts, from its body: `{"after": "<log position>"}` (an SSE id, say) or
/// `{"since": <epoch ms>}`.
pub fn replay_position(body: &[u8]) -> Result<ReplayStart, ApiError> {
    let body = validate::json_object(body)?;
    validate::only_known_fields(&body, &["after", "since"])?;
    match (body.get("after"), body.get("since")) {
        (Some(after), None) => {
            let position = after.as_str().and_then(crate::event_log::position)
                .ok_or_else(|| ApiError::invalid_field("after", "must be a log position such as \"1732252800000-0\""))?;
            Ok(ReplayStart { position: format!("{}-{}", position.0, position.1) })
        }
        (None, Some(since)) => {
            let ms = since.as_number().and_then(crate::validate::whole_number).ok_or_else(|| ApiError::invalid_field("since", "must be a time in epoch milliseconds"))?;
            let position = if ms == 0 { "0-0".to_owned() } else { format!("{}-{}", ms - 1, u64::MAX) };
            Ok(ReplayStart { position })
        }
        _ => Err(ApiError::invalid_field("body", "must give either \"after\" (a log position) or \"since\" (epoch ms)")),
    }
}

/// One event given up on.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub event: Value,
    pub reason: String,
    pub attempts: u64,
    pub failed_at: i64,
}

/// The endpoint's dead letters, oldest first, a page at a time.
pub async fn dead_letters<R: Redis>(r: &R, org: &str, id: &str, after: Option<&str>, limit: u32) -> Result<Page<DeadLetter>, ApiError> {
    get(r, org, id).await?;
    // The entry after `after`, spelled out: an exclusive `(` start fails on the largest id.
    let start = match after.map(|p| crate::event_log::position(p).ok_or_else(|| ApiError::invalid_field("cursor", "is not a cursor this endpoint returned"))).transpose()? {
        None => "-".to_owned(),
        Some((ms, seq)) if seq < u64::MAX => format!("{ms}-{}", seq + 1),
        Some((ms, _)) if ms < u64::MAX => format!("{}-0", ms + 1),
        Some(_) => return Ok(Page { data: Vec::new(), next_cursor: None }),
    };
    let replies = r.execute("XRANGE", args![keys::webhook_dead_letters(org, id), start, "+", "COUNT", limit as i64 + 1]).await?;
    // Flattened: per entry its id, then its field/value pairs; every entry has the same five.
    let mut entries: Vec<(String, DeadLetter)> = Vec::new();
    let mut items = replies.into_iter().map(|r| r.into_string().unwrap_or_default()).peekable();
    while let Some(entry_id) = items.next() {
        let mut fields = std::collections::HashMap::new();
        while let Some(name) = items.next_if(|n| matches!(n.as_str(), "session" | "event" | "reason" | "attempts" | "failedAt")) {
            fields.insert(name, items.next().unwrap_or_default());
        }
        let letter = DeadLetter {
            event: fields.get("event").and_then(|e| serde_json::from_str(e).ok()).unwrap_or(Value::Null),
            reason: fields.remove("reason").unwrap_or_default(),
            attempts: fields.get("attempts").and_then(|a| a.parse().ok()).unwrap_or_default(),
            failed_at: fields.get("failedAt").and_then(|a| a.parse().ok()).unwrap_or_default(),
        };
        entries.push((entry_id, letter));
    }
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_cursor = if more { entries.last().map(|(id, _)| crate::answer::cursor(id)) } else { None };
    Ok(Page { data: entries.into_iter().map(|(_, letter)| letter).collect(), next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<Settings, ApiError>) -> String {
        result.unwrap_err().details["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_create_needs_a_public_http_url_and_known_events() {
        let ok = Settings::for_create(br#"{"url": "https://example.com/hook", "events": ["message.*", "session.status"], "sessions": ["01J"]}"#, false).unwrap();
        assert_eq!(ok.url.as_deref(), Some("https://example.com/hook"));
        assert_eq!(ok.events.unwrap(), ["message.*", "session.status"]);
        for (body, field) in [
            (r#"{}"#, "url"),
            (r#"{"url": "ftp://example.com"}"#, "url"),
            (r#"{"url": "not a url"}"#, "url"),
            (r#"{"url": "http://127.0.0.1:8080/hook"}"#, "url"),
            (r#"{"url": "http://localhost/hook"}"#, "url"),
            (r#"{"url": "http://[::1]/hook"}"#, "url"),
            (r#"{"url": "https://example.com", "events": ["nope.*"]}"#, "events"),
            (r#"{"url": "https://example.com", "events": "message.*"}"#, "events"),
            (r#"{"url": "https://example.com", "sessions": ["../x"]}"#, "sessions"),
            (r#"{"url": "https://example.com", "enabled": "yes"}"#, "enabled"),
            (r#"{"url": "https://example.com", "secret": "mine"}"#, "secret"),
        ] {
            assert_eq!(field_of(Settings::for_create(body.as_bytes(), false)), field, "{body}");
        }
        assert!(Settings::for_create(br#"{"url": "http://127.0.0.1:8080/hook"}"#, true).is_ok(), "allowed by the operator");
    }

    #[test]
    fn an_update_names_something_to_change() {
        assert_eq!(field_of(Settings::for_update(b"{}", false)), "body");
        let off = Settings::for_update(br#"{"enabled": false, "description": null}"#, false).unwrap();
        assert_eq!((off.enabled, off.description, off.url), (Some(false), Some(None), None));
    }

    #[test]
    fn secrets_are_32_random_bytes() {
        let secret = mint_secret();
        let bytes = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix(SECRET_PREFIX).unwrap()).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_ne!(secret, mint_secret());
    }

    #[test]
    fn a_replay_starts_after_a_position_or_at_a_time() {
        let at = |body: &str| replay_position(body.as_bytes()).unwrap().position;
        assert_eq!(at(r#"{"after": "1732252800000-3"}"#), "1732252800000-3");
        assert_eq!(at(r#"{"since": 1732252800000}"#), format!("1732252799999-{}", u64::MAX));
        assert_eq!(at(r#"{"since": 0}"#), "0-0");
        for bad in [r#"{}"#, r#"{"after": "x"}"#, r#"{"since": -1}"#, r#"{"after": "1-0", "since": 1}"#] {
            assert!(replay_position(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
