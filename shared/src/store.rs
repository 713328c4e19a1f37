//! Session rows in Redis: create, read, list and delete, scoped to one organization.

use crate::command::Command;
use crate::event::Event;
use crate::event_log::Retention;
use crate::redis::{Arg, Redis, RedisError, Reply, first};
use crate::session::{Session, SessionStatus};
use crate::{ApiError, args, keys};
use serde_json::{Map, Value};

/// Writes the row and its index entry together, refusing to overwrite an existing row. The
/// index is scored by a per-organization counter, so listing order is exact creation order
/// even for sessions created within the same millisecond.
const CREATE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
  return 1
end
return 0";

/// Removes the row, its index entry and everything kept for the session (KEYS[3..]) together,
/// returning the row so the caller knows who held it.
const DELETE: &str = r"
local row = redis.call('GET', KEYS[1])
if row then
  redis.call('ZREM', KEYS[2], ARGV[1])
  for i = 1, #KEYS do
    if i ~= 2 then redis.call('DEL', KEYS[i]) end
  end
end
return row";

/// The organization's rows in index order, in one round trip. Row keys are built from the
/// prefix in ARGV[1]; they share KEYS[1]'s hash tag, so they live on its cluster slot.
/// MGET goes in chunks to stay under Lua's `unpack` limit.
const LIST: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local rows = {}
for first = 1, #ids, 1000 do
  local keys = {}
  for i = first, math.min(first + 999, #ids) do keys[#keys + 1] = ARGV[1] .. ids[i] end
  for _, row in ipairs(redis.call('MGET', unpack(keys))) do rows[#rows + 1] = row end
end
return rows";

/// A Lua function for the scripts below: appends `ARGV[first..]` (event JSONs) to the log
/// `log` and announces each on `channel` as `<log entry id> <event JSON>`. With a retention
/// (`keep` entries, `max_age` ms; `keep` 0 = none), up to 100 entries that are both outside the
/// newest `keep` and older than `max_age` go per call: bounded work per write that still
/// outpaces the one-by-one growth.
macro_rules! log_events_lua {
    () => {
        r"
local function log_events(log, channel, first, now, keep, max_age)
  for i = first, #ARGV do
    local id = redis.call('XADD', log, '*', 'event', ARGV[i])
    redis.call('PUBLISH', channel, id .. ' ' .. ARGV[i])
  end
  if keep > 0 and #ARGV >= first then
    local excess = redis.call('XLEN', log) - keep
    local cutoff = now - max_age
    if excess > 0 and cutoff > 0 then
      local old = redis.call('XRANGE', log, '-', string.format('(%d-0', cutoff), 'COUNT', math.min(excess, 100))
      for _, entry in ipairs(old) do redis.call('XDEL', log, entry[1]) end
    end
  end
end
"
    };
}

/// Patches a row and appends the events that announce the change, in one atomic step, so no
/// reader ever sees a status without its event or an event without its status. A row that is
/// gone stays gone (the daemon must not resurrect a deleted session).
const UPDATE: &str = concat!(
    log_events_lua!(),
    r"
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local row = cjson.decode(raw)
if ARGV[3] ~= '' and not string.find(ARGV[3], ',' .. row['status'] .. ',', 1, true) then return raw end
for k, v in pairs(cjson.decode(ARGV[1])) do row[k] = v end
row['updatedAt'] = tonumber(ARGV[2])
raw = cjson.encode(row)
redis.call('SET', KEYS[1], raw)
if ARGV[4] == '-' then
  redis.call('DEL', KEYS[2])
elseif ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
end
log_events(KEYS[3], ARGV[6], 9, tonumber(ARGV[2]), tonumber(ARGV[7]), tonumber(ARGV[8]))
return raw"
);

/// Writes a document and logs the events that announce it, atomically (see [`put_logged`]).
const PUT_LOGGED: &str = concat!(
    log_events_lua!(),
    r"
redis.call('SET', KEYS[1], ARGV[1])
log_events(KEYS[2], ARGV[3], 6, tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1"
);

/// What happens to the session's pairing QR alongside an [`Update`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum QrChange {
    #[default]
    Keep,
    Clear,
    /// A new code, kept until it expires.
    Set { code: String, expires_at: i64 },
}

/// A change to one session row: fields to overwrite (camelCase, as the API shows them), the
/// statuses it applies from (empty: any), the QR change, the events that announce it, and the
/// log retention to enforce while appending them. The daemon, which writes nearly every event,
/// enforces the configured retention; a function's occasional intent event leaves trimming to it.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub patch: Map<String, Value>,
    pub only_from: Vec<SessionStatus>,
    pub qr: QrChange,
    pub events: Vec<Event>,
    pub retention: Option<Retention>,
}

impl Update {
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.patch.insert(field.to_owned(), value.into());
        self
    }

    pub fn status(self, status: SessionStatus) -> Self {
        self.set("status", serde_json::to_value(status).unwrap_or(Value::Null))
    }

    pub fn event(mut self, event: Event) -> Self {
        self.events.push(event);
        self
    }

    pub fn qr(mut self, change: QrChange) -> Self {
        self.qr = change;
        self
    }
}

/// Applies an [`Update`]; `None` when the row no longer exists.
pub async fn update<R: Redis>(r: &R, org: &str, session_id: &str, update: Update) -> Result<Option<Session>, ApiError> {
    let only_from = if update.only_from.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = update.only_from.iter().map(|s| s.as_str().to_owned()).collect();
        format!(",{},", names.join(","))
    };
    let now = crate::time::now_millis();
    let (qr, qr_ttl) = match &update.qr {
        QrChange::Keep => (String::new(), 0),
        QrChange::Clear => ("-".to_owned(), 0),
        QrChange::Set { code, expires_at } => {
            (serde_json::json!({ "code": code, "expiresAt": expires_at }).to_string(), (expires_at - now).max(1))
        }
    };
    let mut argv: Vec<Arg> = args![
        UPDATE, 3,
        keys::session(org, session_id), keys::session_qr(org, session_id), keys::org_events(org),
        encode(&update.patch)?, now, only_from, qr, qr_ttl,
    ];
    argv.extend(log_events_args(org, update.retention, &update.events)?);
    decode(first(r, "EVAL", argv).await?)
}

/// Stores `document` under `key` (a key of the organization) and logs `events` with it, in one
/// atomic step: a reader of the document never misses the event announcing it.
pub async fn put_logged<R: Redis>(
    r: &R,
    org: &str,
    key: &str,
    document: &impl serde::Serialize,
    events: &[Event],
    retention: Retention,
) -> Result<(), ApiError> {
    let mut argv: Vec<Arg> = args![PUT_LOGGED, 2, key, keys::org_events(org), encode(document)?, crate::time::now_millis()];
    argv.extend(log_events_args(org, Some(retention), events)?);
    r.execute("EVAL", argv).await?;
    Ok(())
}

/// The trailing arguments of `log_events` in both scripts: the announcement channel, the
/// retention (`0 0` for none), then the events.
fn log_events_args(org: &str, retention: Option<Retention>, events: &[Event]) -> Result<Vec<Arg>, ApiError> {
    let Retention { count, max_age_ms } = retention.unwrap_or(Retention { count: 0, max_age_ms: 0 });
    let mut argv = args![keys::org_events_channel(org), count as i64, max_age_ms as i64];
    for event in events {
        argv.push(Arg::from(encode(event)?));
    }
    Ok(argv)
}

pub(crate) fn encode(value: &impl serde::Serialize) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| ApiError::internal(e.to_string()))
}

/// The session's current pairing QR as the API shows it (`{code, expiresAt}`), if one is live.
pub async fn qr<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Option<Value>, ApiError> {
    decode(first(r, "GET", args![keys::session_qr(org, session_id)]).await?)
}

/// Whether a gateway's daemon has renewed its heartbeat within the last lease period.
pub async fn gateway_is_alive<R: Redis>(r: &R, gateway_id: &str) -> Result<bool, RedisError> {
    Ok(first(r, "EXISTS", args![keys::gateway_alive(gateway_id)]).await?.as_int() == Some(1))
}

/// A stored JSON document; `None` when the key does not exist.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(reply: Reply) -> Result<Option<T>, ApiError> {
    match reply.into_string() {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("stored data is unreadable: {e}"))),
    }
}

pub async fn create<R: Redis>(r: &R, session: &Session) -> Result<(), ApiError> {
    let json = encode(session)?;
    let org = &session.organization_id;
    let created = first(
        r,
        "EVAL",
        args![CREATE, 3, keys::session(org, &session.id), keys::org_sessions(org), keys::org_session_counter(org), json, &session.id],
    )
    .await?;
    if created.as_int() != Some(1) {
        return Err(ApiError::internal("session id collision"));
    }
    // Platform-wide owner index lives outside the organization's slot, so it is a second write.
    r.execute("SET", args![keys::session_owner(&session.id), org]).await?;
    Ok(())
}

/// The caller's session, or 404: another organization's id resolves to a key that does not exist.
pub async fn get<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Session, ApiError> {
    if !crate::validate::is_safe_id(session_id) {
        return Err(ApiError::session_not_found());
    }
    decode(first(r, "GET", args![keys::session(org, session_id)]).await?)?.ok_or_else(ApiError::session_not_found)
}

/// The organization a session belongs to, for platform-wide callers (super_admin, daemon).
pub async fn owner<R: Redis>(r: &R, session_id: &str) -> Result<Option<String>, RedisError> {
    if !crate::validate::is_safe_id(session_id) {
        return Ok(None);
    }
    crate::redis::get_string(r, &keys::session_owner(session_id)).await
}

/// All of the organization's sessions, oldest first.
pub async fn list<R: Redis>(r: &R, org: &str) -> Result<Vec<Session>, ApiError> {
    let rows = r.execute("EVAL", args![LIST, 1, keys::org_sessions(org), keys::session(org, "")]).await?;
    let mut sessions = Vec::with_capacity(rows.len());
    for row in rows {
        // An index entry whose row is gone (an interrupted write) is skipped, not an error.
        sessions.extend(decode::<Session>(row)?);
    }
    Ok(sessions)
}

/// Deletes the row and returns it; 404 when the caller's organization has no such session.
pub async fn delete<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Session, ApiError> {
    if !crate::validate::is_safe_id(session_id) {
        return Err(ApiError::session_not_found());
    }
    let mut kept = vec![
        keys::session(org, session_id),
        keys::org_sessions(org),
        keys::session_qr(org, session_id),
        keys::session_backfill(org, session_id),
    ];
    kept.extend(crate::directory::all_keys(org, session_id));
    let mut argv = args![DELETE, kept.len() as i64];
    argv.extend(kept.into_iter().map(Arg::from));
    argv.push(Arg::from(session_id));
    let row = first(r, "EVAL", argv).await?;
    let session = decode(row)?.ok_or_else(ApiError::session_not_found)?;
    r.execute("DEL", args![keys::session_owner(session_id)]).await?;
    Ok(session)
}

/// Queues a command for the daemon holding the session, or for any daemon when none holds it.
pub async fn enqueue<R: Redis>(r: &R, gateway_id: Option<&str>, command: &Command) -> Result<(), RedisError> {
    let stream = gateway_id.map_or_else(keys::unplaced_commands, keys::gateway_commands);
    let mut args = args![stream, "*"];
    args.extend(command.to_fields());
    r.execute("XADD", args).await.map(drop)
}
