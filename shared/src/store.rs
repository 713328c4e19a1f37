//! Session rows in Redis: create, read, list and delete, scoped to one organization; the
//! daemon's fenced row writes; and queueing commands.
//!
//! Every write that queues a command is one script: what the function writes (the new row, the
//! intent on the row, the deleted row, the backfill job) and the `XADD` of its command happen
//! together or not at all, and the same script gives the command the session's next number
//! (`_seq` on the row, see [`crate::session::Control`]).

use crate::command::Command;
use crate::event::Event;
use crate::event_log::Retention;
use crate::redis::{Arg, Redis, RedisError, Reply, first};
use crate::session::{Control, Session, SessionStatus};
use crate::{ApiError, args, keys};
use serde_json::{Map, Value};

/// Lua functions for the scripts below. A script's log arguments are four in a row from
/// `ARGV[at]`: the announcement channel, then the retention (`keep` entries, `max_age` ms,
/// `max_len` entries; see [`Retention`]), then, for `log_events`, the events to log to the
/// end of `ARGV`. `log_event` appends one event (JSON) to the log `log` and announces it on the
/// channel as `<log entry id> <event JSON>`; `trim_log` then trims the log: up to 100 entries
/// that are both outside the newest `keep` and older than `max_age` go per call (bounded work
/// per write that still outpaces the one-by-one growth), and whatever is past `max_len` goes
/// whatever its age (approximately: whole stream nodes), so however fast an organization
/// writes, its log stays within its cap. Every writer trims, the functions as much as the
/// daemon.
macro_rules! log_events_lua {
    () => {
        r"
local function log_event(log, at, event)
  local id = redis.call('XADD', log, '*', 'event', event)
  redis.call('PUBLISH', ARGV[at], id .. ' ' .. event)
end
local function trim_log(log, now, at)
  local keep, max_age, max_len = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local length = redis.call('XLEN', log)
  if max_len > 0 and length > max_len then
    redis.call('XTRIM', log, 'MAXLEN', '~', max_len)
    length = redis.call('XLEN', log)
  end
  local excess = length - keep
  local cutoff = now - max_age
  if keep > 0 and excess > 0 and cutoff > 0 then
    local old = redis.call('XRANGE', log, '-', string.format('(%d-0', cutoff), 'COUNT', math.min(excess, 100))
    for _, entry in ipairs(old) do redis.call('XDEL', log, entry[1]) end
  end
end
local function log_events(log, at, now)
  for i = at + 4, #ARGV do log_event(log, at, ARGV[i]) end
  if #ARGV >= at + 4 then trim_log(log, now, at) end
end
"
    };
}
pub(crate) use log_events_lua;

/// Lua functions for the scripts that queue a command. `holder_of` is the gateway a row names
/// (`''` for none). `queue_command` numbers the command as the session's next (on the row,
/// which the caller then stores) and appends it to the stream of the gateway holding the
/// session while that gateway's heartbeat lives (`KEYS[at + 1]`, heartbeat `KEYS[at + 2]`),
/// else to the placement stream (`KEYS[at]`). Callers routed for the holder they last saw and
/// refuse (`moved`) when the row names another one, so the keys they declared are the ones used.
macro_rules! queue_command_lua {
    () => {
        r"
local function holder_of(row)
  local holder = row['gatewayId']
  if type(holder) ~= 'string' then return '' end
  return holder
end
local function queue_command(row, at, command_json)
  local seq = (tonumber(row['_seq']) or 0) + 1
  row['_seq'] = seq
  local command = cjson.decode(command_json)
  command['seq'] = seq
  local stream = KEYS[at]
  if holder_of(row) ~= '' and redis.call('EXISTS', KEYS[at + 2]) == 1 then stream = KEYS[at + 1] end
  redis.call('XADD', stream, '*', 'command', cjson.encode(command))
end
"
    };
}
pub(crate) use queue_command_lua;

/// Writes a new row (ARGV[1]) and its index entry, refusing to overwrite an existing row (0) or
/// to go past the organization's quota of ARGV[5] sessions (-1); with a command (ARGV[3])
/// queues it and logs the events that announce the row's first status. The index is scored by
/// a per-organization counter, so listing order is exact creation order even for sessions
/// created within the same millisecond.
const CREATE: &str = concat!(
    log_events_lua!(),
    queue_command_lua!(),
    r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return -1 end
local row = cjson.decode(ARGV[1])
if ARGV[3] ~= '' then queue_command(row, 5, ARGV[3]) end
redis.call('SET', KEYS[1], cjson.encode(row))
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
log_events(KEYS[4], 6, tonumber(ARGV[4]))
return 1"
);

/// Queues a command (ARGV[2]) for the session, first writing its intent: the status ARGV[3]
/// when the row is in one of ARGV[4] (`,a,b,`; empty: any), announced by the events
/// ARGV[10..]. Returns the row as it now stands.
const ENQUEUE: &str = concat!(
    log_events_lua!(),
    queue_command_lua!(),
    r"
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local row = cjson.decode(raw)
if holder_of(row) ~= ARGV[1] then return redis.status_reply('moved') end
local intent = ARGV[3] ~= '' and (ARGV[4] == '' or string.find(ARGV[4], ',' .. row['status'] .. ',', 1, true))
if intent then
  row['status'] = ARGV[3]
  row['statusReason'] = cjson.null
  row['updatedAt'] = tonumber(ARGV[5])
end
queue_command(row, 3, ARGV[2])
raw = cjson.encode(row)
redis.call('SET', KEYS[1], raw)
if intent then log_events(KEYS[2], 6, tonumber(ARGV[5])) end
return raw"
);

/// Removes the row, its index entry and everything kept for the session (KEYS[6..]) and queues
/// the cleanup command (ARGV[3]) for whoever holds it, returning the row as it was.
const DELETE: &str = concat!(
    queue_command_lua!(),
    r"
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local row = cjson.decode(raw)
if holder_of(row) ~= ARGV[2] then return redis.status_reply('moved') end
queue_command(row, 3, ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
return raw"
);

/// Stores a new job document (KEYS[1], ARGV[1]) and queues its command unless a job is running
/// (returned instead). `gone` when the session's row is gone.
const START_JOB: &str = concat!(
    queue_command_lua!(),
    r"
local job = redis.call('GET', KEYS[1])
if job and cjson.decode(job)['status'] == 'running' then return job end
local raw = redis.call('GET', KEYS[2])
if not raw then return redis.status_reply('gone') end
local row = cjson.decode(raw)
if holder_of(row) ~= ARGV[2] then return redis.status_reply('moved') end
queue_command(row, 3, ARGV[3])
redis.call('SET', KEYS[2], cjson.encode(row))
redis.call('SET', KEYS[1], ARGV[1])
return false"
);

/// Queues a command on a gateway's own stream while its heartbeat lives (a daemon handing a
/// command to the holder); 0 when the gateway is gone, so the command is not left on a stream
/// nobody will read.
const FORWARD: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('XADD', KEYS[1], '*', 'command', ARGV[1])
return 1";

/// One page of the organization's rows in index order: up to ARGV[3] entries scored after
/// ARGV[2], then the last one's score (where the next page starts). Row keys are built from the
/// prefix in ARGV[1]; they share KEYS[1]'s hash tag, so they live on its cluster slot. One
/// cursor per page, not a score per row: every value of a reply crosses into the component.
const LIST_PAGE: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], '(' .. ARGV[2], '+inf', 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]), 'WITHSCORES')
if #ids == 0 then return {} end
local keys = {}
for i = 1, #ids, 2 do keys[#keys + 1] = ARGV[1] .. ids[i] end
local rows = redis.call('MGET', unpack(keys))
rows[#rows + 1] = ids[#ids]
return rows";

/// Rows read per script call when listing: each call is short, whatever the organization's size.
const LIST_PAGE_SIZE: i64 = 200;

/// Patches a row and appends the events that announce the change, in one atomic step, so no
/// reader ever sees a status without its event or an event without its status. A row that is
/// gone stays gone (the daemon must not resurrect a deleted session), and a write carrying a
/// fencing token (ARGV[5]) other than the row's is refused (`fenced`): its daemon no longer
/// holds the session.
const UPDATE: &str = concat!(
    log_events_lua!(),
    r"
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local row = cjson.decode(raw)
if (tonumber(row['_fence']) or 0) ~= tonumber(ARGV[5]) then return redis.status_reply('fenced') end
for k, v in pairs(cjson.decode(ARGV[1])) do row[k] = v end
row['updatedAt'] = tonumber(ARGV[2])
raw = cjson.encode(row)
redis.call('SET', KEYS[1], raw)
if ARGV[3] == '-' then
  redis.call('DEL', KEYS[2])
elseif ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
log_events(KEYS[3], 6, tonumber(ARGV[2]))
return raw"
);

/// Writes a document and logs the events that announce it, atomically (see [`put_logged`]),
/// unless the session's row (KEYS[3]) is gone.
const PUT_LOGGED: &str = concat!(
    log_events_lua!(),
    r"
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
log_events(KEYS[2], 3, tonumber(ARGV[2]))
return 1"
);

/// Logs events about a session (ARGV[6..]) while its row (KEYS[1]) exists.
const ANNOUNCE: &str = concat!(
    log_events_lua!(),
    r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
log_events(KEYS[2], 2, tonumber(ARGV[1]))
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
/// QR change, the events that announce it, the log retention to enforce while appending them,
/// and the fencing token of the lease it is written under (0 for a row no lease was ever taken on).
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub patch: Map<String, Value>,
    pub qr: QrChange,
    pub events: Vec<Event>,
    pub retention: Retention,
    pub fence: i64,
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

/// What became of an [`Update`].
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Row(Session),
    /// The row no longer exists.
    Gone,
    /// Another lease was taken since the writer's: the writer no longer holds the session.
    Fenced,
}

/// Applies an [`Update`].
pub async fn update<R: Redis>(r: &R, org: &str, session_id: &str, update: Update) -> Result<Written, ApiError> {
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
        encode(&update.patch)?, now, qr, qr_ttl, update.fence,
    ];
    argv.extend(log_events_args(org, update.retention, &update.events)?);
    match first(r, "EVAL", argv).await? {
        Reply::Status(s) if s == "fenced" => Ok(Written::Fenced),
        reply => Ok(decode(reply)?.map_or(Written::Gone, Written::Row)),
    }
}

/// Stores `document` under `key` (a key of the session) and logs `events` with it, in one
/// atomic step: a reader of the document never misses the event announcing it. Nothing is
/// written once the session is deleted.
pub async fn put_logged<R: Redis>(
    r: &R,
    org: &str,
    session_id: &str,
    key: &str,
    document: &impl serde::Serialize,
    events: &[Event],
    retention: Retention,
) -> Result<(), ApiError> {
    let mut argv: Vec<Arg> = args![
        PUT_LOGGED, 3, key, keys::org_events(org), keys::session(org, session_id), encode(document)?, crate::time::now_millis(),
    ];
    argv.extend(log_events_args(org, retention, events)?);
    r.execute("EVAL", argv).await?;
    Ok(())
}

/// Logs `events` about a session that changed nothing on its row; nothing once it is deleted.
pub async fn announce<R: Redis>(r: &R, org: &str, session_id: &str, events: &[Event], retention: Retention) -> Result<(), ApiError> {
    let mut argv: Vec<Arg> = args![ANNOUNCE, 2, keys::session(org, session_id), keys::org_events(org), crate::time::now_millis()];
    argv.extend(log_events_args(org, retention, events)?);
    r.execute("EVAL", argv).await?;
    Ok(())
}

/// The trailing arguments of `log_events` in the scripts: the announcement channel, the
/// retention, then the events.
pub(crate) fn log_events_args(org: &str, retention: Retention, events: &[Event]) -> Result<Vec<Arg>, ApiError> {
    let Retention { count, max_age_ms, max_len } = retention;
    let mut argv = args![keys::org_events_channel(org), count as i64, max_age_ms as i64, max_len as i64];
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

/// The three keys every queueing script ends its routing with: the placement stream, then the
/// stream and heartbeat of `holder` (the placement stream again when there is none).
pub(crate) fn route_keys(holder: Option<&str>) -> Vec<Arg> {
    let unplaced = keys::unplaced_commands();
    match holder {
        Some(gateway) => args![unplaced, keys::gateway_commands(gateway), keys::gateway_alive(gateway)],
        None => args![unplaced.clone(), unplaced.clone(), unplaced],
    }
}

/// What a queueing script answered: its result, or that the row names another holder than the
/// one the command was routed for.
pub(crate) enum Routed {
    Done(Reply),
    Moved,
}

impl From<Reply> for Routed {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Status(s) if s == "moved" => Routed::Moved,
            other => Routed::Done(other),
        }
    }
}

/// Runs a queueing script routed for the holder the caller saw; when the session changed hands
/// in between, routes again for the holder the row names now.
pub(crate) async fn routed<R: Redis>(
    r: &R,
    org: &str,
    session_id: &str,
    mut holder: Option<String>,
    mut script: impl AsyncFnMut(Option<&str>) -> Result<Routed, ApiError>,
) -> Result<Reply, ApiError> {
    for _ in 0..8 {
        match script(holder.as_deref()).await? {
            Routed::Done(reply) => return Ok(reply),
            Routed::Moved => holder = get(r, org, session_id).await?.gateway_id,
        }
    }
    Err(ApiError::new(crate::ErrorCode::Unavailable, "the session is changing hands; retry shortly"))
}

/// Creates the row, unless the organization already has `quota` sessions (409); with `start`,
/// queues that command and logs the events that announce the row's first status, in the same
/// step.
pub async fn create<R: Redis>(r: &R, session: &Session, quota: u64, start: Option<(&Command, &[Event])>, log: Retention) -> Result<(), ApiError> {
    let org = &session.organization_id;
    // The platform-wide owner index lives outside the organization's slot: written first, so
    // whoever finds the row can always find its organization.
    r.execute("SET", args![keys::session_owner(&session.id), org]).await?;
    let (command, events) = match start {
        Some((command, events)) => (command.to_json(), events),
        None => (String::new(), &[][..]),
    };
    let mut argv = args![
        CREATE, 7,
        keys::session(org, &session.id), keys::org_sessions(org), keys::org_session_counter(org), keys::org_events(org),
    ];
    argv.extend(route_keys(None));
    argv.extend(args![encode(session)?, &session.id, command, crate::time::now_millis()]);
    argv.push(Arg::Int(quota.min(i64::MAX as u64) as i64));
    argv.extend(log_events_args(org, log, &[])?);
    argv.extend(events.iter().map(|e| encode(e).map(Arg::from)).collect::<Result<Vec<_>, _>>()?);
    match first(r, "EVAL", argv).await?.as_int() {
        Some(1) => Ok(()),
        Some(-1) => {
            r.execute("DEL", args![keys::session_owner(&session.id)]).await?;
            Err(ApiError::new(crate::ErrorCode::Conflict, format!("the organization has reached its quota of {quota} sessions; delete one first"))
                .with_detail("reason", "session_quota")
                .with_detail("limit", quota))
        }
        _ => Err(ApiError::internal("session id collision")),
    }
}

/// Queues `command` for the session, with the intent `(status, from, event)` it writes on the
/// row first: `status` when the row is in one of `from` (empty: any). Returns the row as it
/// then stands.
pub async fn enqueue<R: Redis>(
    r: &R,
    session: &Session,
    command: &Command,
    intent: Option<(SessionStatus, &[SessionStatus], Event)>,
    log: Retention,
) -> Result<Session, ApiError> {
    let org = &session.organization_id;
    let (status, from, events) = match intent {
        Some((status, from, event)) => {
            let names: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
            let from = if names.is_empty() { String::new() } else { format!(",{},", names.join(",")) };
            (status.as_str(), from, vec![event])
        }
        None => ("", String::new(), vec![]),
    };
    let json = command.to_json();
    let reply = routed(r, org, &session.id, session.gateway_id.clone(), async |holder| {
        let mut argv = args![ENQUEUE, 5, keys::session(org, &session.id), keys::org_events(org)];
        argv.extend(route_keys(holder));
        argv.extend(args![holder.unwrap_or(""), json.as_str(), status, from.as_str(), crate::time::now_millis()]);
        argv.extend(log_events_args(org, log, &events)?);
        Ok(first(r, "EVAL", argv).await?.into())
    })
    .await?;
    decode(reply)?.ok_or_else(ApiError::session_not_found)
}

/// Stores a new job document under `key` and queues its command, unless a job is running there:
/// `Err` carries that job's document.
pub async fn start_job<R: Redis>(
    r: &R,
    session: &Session,
    key: &str,
    job: &impl serde::Serialize,
    command: &Command,
) -> Result<Result<(), Value>, ApiError> {
    let org = &session.organization_id;
    let (job, json) = (encode(job)?, command.to_json());
    let reply = routed(r, org, &session.id, session.gateway_id.clone(), async |holder| {
        let mut argv = args![START_JOB, 5, key, keys::session(org, &session.id)];
        argv.extend(route_keys(holder));
        argv.extend(args![job.as_str(), holder.unwrap_or(""), json.as_str()]);
        Ok(first(r, "EVAL", argv).await?.into())
    })
    .await?;
    match reply {
        Reply::Status(s) if s == "gone" => Err(ApiError::session_not_found()),
        reply => Ok(decode(reply)?.map_or(Ok(()), Err)),
    }
}

/// Queues a command on the stream of `gateway` while that gateway is alive; `false` when it is
/// not (the command was not queued).
pub async fn forward<R: Redis>(r: &R, gateway: &str, command: &Command) -> Result<bool, RedisError> {
    let argv = args![FORWARD, 2, keys::gateway_commands(gateway), keys::gateway_alive(gateway), command.to_json()];
    Ok(first(r, "EVAL", argv).await?.as_int() == Some(1))
}

/// Queues a command, keeping its number, on the placement stream any daemon reads.
pub async fn requeue<R: Redis>(r: &R, command: &Command) -> Result<(), RedisError> {
    r.execute("XADD", args![keys::unplaced_commands(), "*", crate::command::ENTRY_FIELD, command.to_json()]).await.map(drop)
}

/// The caller's session, or 404: another organization's id resolves to a key that does not exist.
pub async fn get<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Session, ApiError> {
    get_with_control(r, org, session_id).await?.map(|(session, _)| session).ok_or_else(ApiError::session_not_found)
}

/// The row with what the scripts keep on it; `None` when it does not exist.
pub async fn get_with_control<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Option<(Session, Control)>, ApiError> {
    if !crate::validate::is_safe_id(session_id) {
        return Ok(None);
    }
    let Some(raw) = first(r, "GET", args![keys::session(org, session_id)]).await?.into_string() else { return Ok(None) };
    let unreadable = |e: serde_json::Error| ApiError::internal(format!("stored data is unreadable: {e}"));
    Ok(Some((serde_json::from_str(&raw).map_err(unreadable)?, serde_json::from_str(&raw).map_err(unreadable)?)))
}

/// The organization a session belongs to, for platform-wide callers (super_admin, daemon).
pub async fn owner<R: Redis>(r: &R, session_id: &str) -> Result<Option<String>, RedisError> {
    if !crate::validate::is_safe_id(session_id) {
        return Ok(None);
    }
    crate::redis::get_string(r, &keys::session_owner(session_id)).await
}

/// All of the organization's sessions, oldest first, read a page per round trip so Redis never
/// runs one long script for a large organization.
pub async fn list<R: Redis>(r: &R, org: &str) -> Result<Vec<Session>, ApiError> {
    Ok(page(r, org, None, None).await?.0)
}

/// The organization's sessions in creation order, after the position `after` (a score a page
/// ended on): `limit` of them, or all; with the position the next page starts after, if the
/// page was cut short.
pub async fn page<R: Redis>(r: &R, org: &str, after: Option<&str>, limit: Option<usize>) -> Result<(Vec<Session>, Option<String>), ApiError> {
    let mut sessions = Vec::new();
    let mut after = after.unwrap_or("-inf").to_owned();
    loop {
        let want = limit.map_or(LIST_PAGE_SIZE, |limit| (limit - sessions.len()).min(LIST_PAGE_SIZE as usize) as i64);
        let mut page = r.execute("EVAL", args![LIST_PAGE, 1, keys::org_sessions(org), keys::session(org, ""), after.as_str(), want]).await?;
        let Some(cursor) = page.pop() else { return Ok((sessions, None)) };
        let full = page.len() >= want as usize;
        // An index entry whose row is gone (an interrupted write) is skipped, not an error.
        for row in page {
            sessions.extend(decode::<Session>(row)?);
        }
        after = cursor.into_string().unwrap_or_default();
        if !full {
            return Ok((sessions, None));
        }
        if limit.is_some_and(|limit| sessions.len() >= limit) {
            return Ok((sessions, Some(after)));
        }
    }
}

/// Why a session is reported as not running where its row says it runs.
pub const GATEWAY_UNAVAILABLE: &str = "gateway_unavailable";

/// Makes rows say what is true now: a row's status is what its gateway's daemon last wrote, so
/// a session whose gateway's heartbeat is gone (the daemon died), or comes from another process
/// than the one that wrote the row (restarted, not yet resumed), is reported `starting`, held by
/// no gateway, until a daemon runs it again. One heartbeat read per gateway named.
pub async fn observe<R: Redis>(r: &R, sessions: &mut [Session]) -> Result<(), ApiError> {
    let mut heartbeats: Vec<(String, Option<String>)> = Vec::new();
    for session in sessions.iter_mut() {
        let Some(gateway) = session.gateway_id.clone() else { continue };
        if !session.status.is_running() {
            continue;
        }
        let live_process = match heartbeats.iter().find(|(g, _)| *g == gateway) {
            Some((_, process)) => process.clone(),
            None => {
                let process = crate::redis::get_string(r, &keys::gateway_alive(&gateway)).await?;
                heartbeats.push((gateway, process.clone()));
                process
            }
        };
        if live_process.is_some() && live_process == session.written_by {
            continue;
        }
        session.status = SessionStatus::Starting;
        session.gateway_id = None;
        session.status_reason = Some(GATEWAY_UNAVAILABLE.to_owned());
    }
    Ok(())
}

/// [`get`], as [`observe`] reports it.
pub async fn get_observed<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Session, ApiError> {
    let mut session = get(r, org, session_id).await?;
    observe(r, std::slice::from_mut(&mut session)).await?;
    Ok(session)
}

/// How long a deletion is remembered for daemons that were away ([`keys::session_deleted`]).
const DELETION_RECORD_SECS: i64 = 30 * 24 * 3600;

/// Whether the session was deleted (within the last [`DELETION_RECORD_SECS`]).
pub async fn was_deleted<R: Redis>(r: &R, session_id: &str) -> Result<bool, RedisError> {
    Ok(first(r, "EXISTS", args![keys::session_deleted(session_id)]).await?.as_int() == Some(1))
}

/// Deletes the row with everything kept for the session and queues the cleanup `command` for
/// its holder, in one step; returns the row. 404 when the organization has no such session.
pub async fn delete<R: Redis>(r: &R, org: &str, session_id: &str, command: &Command) -> Result<Session, ApiError> {
    let session = get(r, org, session_id).await?;
    let mut kept = vec![
        keys::session_qr(org, session_id),
        keys::session_backfill(org, session_id),
        keys::session_lease(org, session_id),
    ];
    kept.extend(crate::directory::all_keys(org, session_id));
    kept.extend(crate::outbox::session_keys(org, session_id));
    let json = command.to_json();
    let row = routed(r, org, session_id, session.gateway_id, async |holder| {
        let mut argv = args![DELETE, 5 + kept.len() as i64, keys::session(org, session_id), keys::org_sessions(org)];
        argv.extend(route_keys(holder));
        argv.extend(kept.iter().map(Arg::from));
        argv.extend(args![session_id, holder.unwrap_or(""), json.as_str()]);
        Ok(first(r, "EVAL", argv).await?.into())
    })
    .await?;
    let session = decode(row)?.ok_or_else(ApiError::session_not_found)?;
    r.execute("SET", args![keys::session_deleted(session_id), org, "EX", DELETION_RECORD_SECS]).await?;
    r.execute("DEL", args![keys::session_owner(session_id)]).await?;
    Ok(session)
}
