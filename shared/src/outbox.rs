//! Messages in Redis: accepted into a session's outbox, read, cancelled, and advanced through
//! their statuses.
//!
//! Accepting is one script: the message (a hash: content `doc`, `status`, `rank`, the time of
//! each step), its place at the end of the session's outbox, its WhatsApp id's index entry, the
//! idempotency key, the `message.status` event, and a wake-up for the daemon that runs the
//! session. The message is durable before the API answers 202. The daemon takes messages from
//! the head of the outbox in order; a message leaves the outbox when WhatsApp's server
//! acknowledged it (`sent`) or it failed. Statuses only move forward (by `rank`), so a late or
//! repeated receipt never moves a message back.

use crate::command::{Command, CommandKind};
use crate::event::{Event, EventType};
use crate::message::{Content, Message, MessageError, MessageStatus};
use crate::redis::{Arg, Redis, RedisError, Reply, first, hash_fields};
use crate::session::Session;
use crate::history::{self, index_message_lua};
use crate::event_log::Retention;
use crate::store::{encode, log_events_args, log_events_lua, queue_command_lua, route_keys, routed};
use crate::{ApiError, ErrorCode, args, keys};

/// Stores a message at the end of the session's outbox (see the module doc). `KEYS`: message,
/// outbox, row, idempotency key, WhatsApp id index, event log, the routing keys, the session's
/// and the chat's message indexes, the message's inline file, the session's file sizes, and
/// the deployment's outbox deadlines (ARGV[19], the session, is due by ARGV[18] at the latest).
/// The message keeps its retention (ARGV[3], `keepMs`) for after it leaves the outbox; while
/// queued it lives ARGV[17] ms, past its deadline, so it fails `expired` before it could vanish.
/// The organization's messages this minute (KEYS[15], ending at ARGV[21]) stay within ARGV[20]
/// (0: no quota): `org_quota` past it.
/// A file (ARGV[13]) is kept (for ARGV[15] ms) only while the session's queued files stay
/// within ARGV[14] bytes; a size whose file is gone (its message went out by any way, or
/// lapsed) is struck off first, so the books never drift (files: the prefix ARGV[16] and the id).
/// Answers the stored value of an idempotency key already used (bulk), else a status:
/// `queued`, `gone`, `not_paired`, `full`, `files_full`, `org_quota`, `moved`.
const ACCEPT: &str = concat!(
    log_events_lua!(),
    queue_command_lua!(),
    index_message_lua!(),
    r"
if ARGV[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return seen end
end
local raw = redis.call('GET', KEYS[3])
if not raw then return redis.status_reply('gone') end
local row = cjson.decode(raw)
if type(row['waJid']) ~= 'string' then return redis.status_reply('not_paired') end
if holder_of(row) ~= ARGV[8] then return redis.status_reply('moved') end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[7]) then return redis.status_reply('full') end
local quota = tonumber(ARGV[20])
if quota > 0 and tonumber(redis.call('GET', KEYS[15]) or '0') >= quota then return redis.status_reply('org_quota') end
if ARGV[13] ~= '' then
  local held, sizes = 0, redis.call('HGETALL', KEYS[13])
  for i = 1, #sizes, 2 do
    if redis.call('EXISTS', ARGV[16] .. sizes[i]) == 1 then held = held + tonumber(sizes[i + 1]) else redis.call('HDEL', KEYS[13], sizes[i]) end
  end
  if held + #ARGV[13] > tonumber(ARGV[14]) then return redis.status_reply('files_full') end
  redis.call('SET', KEYS[12], ARGV[13], 'PX', ARGV[15])
  redis.call('HSET', KEYS[13], ARGV[10], #ARGV[13])
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'waId', ARGV[11], 'status', 'queued', 'rank', 0, 'queuedAt', ARGV[2], 'updatedAt', ARGV[2], 'keepMs', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[17])
redis.call('SET', KEYS[5], ARGV[10], 'PX', ARGV[17])
redis.call('RPUSH', KEYS[2], ARGV[10])
redis.call('ZADD', KEYS[14], 'LT', ARGV[18], ARGV[19])
redis.call('INCR', KEYS[15])
redis.call('PEXPIREAT', KEYS[15], ARGV[21])
index_message(KEYS[10], KEYS[11], ARGV[10], ARGV[12], ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[6]) end
if holder_of(row) ~= '' and redis.call('EXISTS', KEYS[9]) == 1 then
  redis.call('XADD', KEYS[8], '*', 'command', ARGV[9])
end
log_events(KEYS[6], 22, tonumber(ARGV[2]))
return redis.status_reply('queued')"
);

/// How long a message that failed (canceled, expired, refused…) is kept: long enough to read
/// why, not its whole retention, so a loop of sends and cancels holds no memory for days.
pub const FAILED_KEEP_MS: i64 = 3_600_000;

/// `keep_sent(message)` / `keep_failed(message)`: a message that left the outbox is kept its
/// retention (`keepMs`, set when it was accepted) from now, or [`FAILED_KEEP_MS`] at most once
/// it failed. A message stored before `keepMs` existed keeps the expiry it has.
macro_rules! keep_lua {
    () => {
        r"
local FAILED_KEEP_MS = 3600000
local function keep_sent(message)
  local keep = tonumber(redis.call('HGET', message, 'keepMs'))
  if keep then redis.call('PEXPIRE', message, keep) end
end
local function keep_failed(message)
  local keep = tonumber(redis.call('HGET', message, 'keepMs'))
  if keep then redis.call('PEXPIRE', message, math.min(keep, FAILED_KEEP_MS)) end
end
"
    };
}

/// Cancels a queued message (ARGV[1]) no daemon has begun sending: out of the outbox (its
/// inline file, KEYS[4], and that file's size, in KEYS[5], too), `failed` (rank ARGV[4]) with
/// the error ARGV[3], announced, and kept [`FAILED_KEEP_MS`]. Answers the status that
/// prevented it, or `canceled`.
const CANCEL: &str = concat!(
    log_events_lua!(),
    keep_lua!(),
    r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return redis.status_reply('gone') end
if status ~= 'queued' then return redis.status_reply(status) end
if redis.call('HEXISTS', KEYS[1], 'sendingAt') == 1 then return redis.status_reply('sending') end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'failed', 'rank', ARGV[4], 'failedAt', ARGV[2], 'updatedAt', ARGV[2], 'error', ARGV[3])
keep_failed(KEYS[1])
log_events(KEYS[3], 5, tonumber(ARGV[2]))
return redis.status_reply('canceled')"
);

/// Moves a message forward to ARGV[1] (rank ARGV[2], its time field ARGV[3]) at ARGV[4]; with
/// ARGV[6] set, only from `queued` (rank 0): a failure never overrides a send. `sent` and
/// `failed` take it out of the outbox whatever it was. Any step means the message is past
/// sending, so its inline file (KEYS[5]) and that file's size (KEYS[6]) go. With a lease value (ARGV[7]) the write
/// is refused (`fenced`) unless KEYS[4] holds it; with ARGV[11] set (a sweep, not the holder)
/// a message a live holder claimed (`sendingAt`, KEYS[4] held) is left to it. A receipt past
/// `sent` implies the send of an outbound (queued) message. Leaving the outbox, the message is
/// kept its retention from now (`sent`) or briefly (`failed`).
const ADVANCE: &str = concat!(
    log_events_lua!(),
    keep_lua!(),
    r"
if ARGV[7] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[7] then return redis.status_reply('fenced') end
if ARGV[11] == '1' and redis.call('HEXISTS', KEYS[1], 'sendingAt') == 1 and redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if ARGV[8] == '1' then redis.call('LREM', KEYS[2], 0, ARGV[9]) end
redis.call('DEL', KEYS[5])
redis.call('HDEL', KEYS[6], ARGV[9])
local rank = tonumber(redis.call('HGET', KEYS[1], 'rank'))
if not rank then return 0 end
local to = tonumber(ARGV[2])
if ARGV[10] ~= '' and redis.call('HEXISTS', KEYS[1], 'queuedAt') == 1 and redis.call('HEXISTS', KEYS[1], ARGV[10]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[10], ARGV[4])
end
-- A delivery overturns an `undeliverable` verdict: another of the recipient's devices took it.
local delivery = ARGV[1] == 'delivered' or ARGV[1] == 'read' or ARGV[1] == 'played'
local overturned = delivery and redis.call('HGET', KEYS[1], 'undeliverable') == '1'
if (rank >= to and not overturned) or (ARGV[6] == '1' and rank ~= 0) then return 0 end
if overturned then redis.call('HDEL', KEYS[1], 'undeliverable', 'error', 'failedAt') end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'rank', to, ARGV[3], ARGV[4], 'updatedAt', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[1] == 'sent' then keep_sent(KEYS[1]) elseif ARGV[1] == 'failed' then keep_failed(KEYS[1]) end
log_events(KEYS[3], 12, tonumber(ARGV[4]))
return 1"
);

/// Settings the API applies when it accepts a message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages a session's outbox holds at most.
    pub queue_max: u64,
    /// How long a message may wait queued before it fails as `expired` (ms).
    pub max_queued_ms: u64,
    /// How long a message is kept (ms).
    pub retention_ms: u64,
    /// How long an idempotency key is remembered (ms).
    pub idempotency_ms: u64,
    /// The largest file a message carries (bytes).
    pub media_max_bytes: u64,
    /// What the inline files of one session's queued messages may add up to (bytes).
    pub media_queue_max_bytes: u64,
    /// The organization's event log, trimmed as the `queued` event is appended.
    pub log: Retention,
}

/// What accepting a message did.
#[derive(Debug)]
pub enum Accepted {
    /// Queued now: the message as stored.
    New(Message),
    /// The idempotency key was used before for this message id, with a body whose hash was this.
    Seen { message_id: String, body_hash: String },
}

/// Accepts a message into the session's outbox (see [`ACCEPT`]), to go out with the WhatsApp
/// id `wa_id`, with its inline `file` if it has one. `idempotency` is the key's hash and the
/// request body's hash. It counts in the organization's `window` of messages, and is refused
/// (429) when that is full.
pub async fn accept<R: Redis>(
    r: &R,
    session: &Session,
    content: &Content,
    file: Option<&[u8]>,
    wa_id: &str,
    idempotency: Option<(&str, &str)>,
    limits: Limits,
    window: &crate::quota::MessageWindow,
) -> Result<Accepted, ApiError> {
    let (org, session_id) = (&session.organization_id, &session.id);
    let (key_hash, body_hash) = idempotency.unwrap_or(("", ""));
    let idempotency_key = keys::message_idempotency(org, session_id, if key_hash.is_empty() { "-" } else { key_hash });
    let wake = Command::new(CommandKind::Send, session_id, org).to_json();
    let doc = encode(content)?;
    let queued = status_event(org, session_id, &content.id, MessageStatus::Queued, None, None, &content.chat);
    let now = crate::time::now_millis();
    let reply = routed(r, org, session_id, session.gateway_id.clone(), async |holder| {
        let mut argv = args![
            ACCEPT, 15,
            keys::message(org, &content.id), keys::session_outbox(org, session_id), keys::session(org, session_id),
            idempotency_key.as_str(), keys::session_wa_message(org, session_id, wa_id), keys::org_events(org),
        ];
        argv.extend(route_keys(holder));
        argv.extend(args![
            keys::session_messages(org, session_id), keys::session_chat_messages(org, session_id, &content.chat),
            keys::message_upload(org, &content.id), keys::session_uploads(org, session_id), keys::outbox_deadlines(), window.key.as_str(),
        ]);
        argv.extend(args![
            doc.as_str(), now, limits.retention_ms as i64, key_hash,
            format!("{} {body_hash}", content.id), limits.idempotency_ms as i64, limits.queue_max as i64,
            holder.unwrap_or(""), wake.as_str(), content.id.as_str(), wa_id, history::floor(now, limits.retention_ms),
        ]);
        // A file outlives its message's queueing only while a send begun before the expiry ends.
        let file_ttl = limits.max_queued_ms.saturating_add(3_600_000) as i64;
        argv.extend([Arg::Bytes(file.unwrap_or_default().to_vec()), Arg::Int(limits.media_queue_max_bytes as i64), Arg::Int(file_ttl)]);
        argv.push(keys::message_upload(org, "").into());
        let queued_ttl = limits.max_queued_ms.saturating_add(limits.retention_ms) as i64;
        argv.extend(args![queued_ttl, now.saturating_add(limits.max_queued_ms as i64), deadline_member(org, session_id)]);
        argv.extend(args![window.limit as i64, window.ends_at]);
        argv.extend(log_events_args(org, limits.log, std::slice::from_ref(&queued))?);
        Ok(first(r, "EVAL", argv).await?.into())
    })
    .await;
    match reply? {
        Reply::Status(s) if s == "queued" => {
            Ok(Accepted::New(Message::stored(&doc, wa_id, MessageStatus::Queued, now)?))
        }
        Reply::Status(s) if s == "gone" => Err(ApiError::session_not_found()),
        Reply::Status(s) if s == "not_paired" => Err(ApiError::new(ErrorCode::Conflict, "the session is not paired with a WhatsApp number; pair it first")
            .with_detail("reason", "not_paired")),
        Reply::Status(s) if s == "files_full" => Err(ApiError::rate_limited(
            format!("the session's queued messages hold {} bytes of files already; wait for them to go out", limits.media_queue_max_bytes),
            "outbox_files",
            limits.media_queue_max_bytes,
            60,
        )),
        Reply::Status(s) if s == "org_quota" => Err(window.exceeded(now)),
        Reply::Status(s) if s == "full" => Err(ApiError::rate_limited(
            format!("the session's outbox holds {} messages already; wait for it to drain", limits.queue_max),
            "outbox",
            limits.queue_max,
            60,
        )),
        reply => {
            let seen = reply.into_string().unwrap_or_default();
            let (message_id, body_hash) = seen.split_once(' ').unwrap_or((seen.as_str(), ""));
            Ok(Accepted::Seen { message_id: message_id.to_owned(), body_hash: body_hash.to_owned() })
        }
    }
}

/// A message of the session, or 404 (another session's or organization's message is not found).
pub async fn get<R: Redis>(r: &R, org: &str, session_id: &str, message_id: &str) -> Result<Message, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "message not found");
    if !crate::validate::is_safe_id(message_id) {
        return Err(not_found());
    }
    let fields = hash_fields(r.execute("HGETALL", args![keys::message(org, message_id)]).await?);
    if fields.is_empty() {
        return Err(not_found());
    }
    let message = Message::from_fields(&fields)?;
    if message.content.session_id != session_id {
        return Err(not_found());
    }
    Ok(message)
}

/// The stored content of a message and its WhatsApp id, if it is still kept.
pub async fn content<R: Redis>(r: &R, org: &str, message_id: &str) -> Result<Option<(Content, Option<String>)>, ApiError> {
    let mut fields = r.execute("HMGET", args![keys::message(org, message_id), "doc", "waId"]).await?.into_iter().map(Reply::into_string);
    let (Some(Some(doc)), wa_id) = (fields.next(), fields.next().flatten()) else { return Ok(None) };
    Ok(Some((decode_content(&doc)?, wa_id)))
}

/// A message's content as stored.
pub fn decode_content(doc: &str) -> Result<Content, ApiError> {
    serde_json::from_str(doc).map_err(|e| ApiError::internal(format!("stored message is unreadable: {e}")))
}

/// Cancels a message still queued; 409 once a daemon began sending it or it ended.
pub async fn cancel<R: Redis>(r: &R, message: &Message, org: &str, log: Retention) -> Result<(), ApiError> {
    let error = MessageError { code: "canceled".to_owned(), message: "canceled through the API before it was sent".to_owned() };
    let Content { id, session_id, chat, .. } = &message.content;
    let event = status_event(org, session_id, id, MessageStatus::Failed, Some(&error), None, chat);
    let mut argv = args![
        CANCEL, 5, keys::message(org, id), keys::session_outbox(org, session_id), keys::org_events(org),
        keys::message_upload(org, id), keys::session_uploads(org, session_id),
        id.as_str(), crate::time::now_millis(), encode(&error)?, MessageStatus::Failed.rank() as i64,
    ];
    argv.extend(log_events_args(org, log, &[event])?);
    match first(r, "EVAL", argv).await? {
        Reply::Status(s) if s == "canceled" => Ok(()),
        Reply::Status(s) if s == "gone" => Err(ApiError::new(ErrorCode::NotFound, "message not found")),
        Reply::Status(s) => Err(ApiError::new(ErrorCode::Conflict, format!("the message can no longer be canceled: it is {}", if s == "sending" { "being sent" } else { s.as_str() }))
            .with_detail("reason", "not_queued")
            .with_detail("status", s)),
        _ => Err(ApiError::internal("unexpected answer canceling a message")),
    }
}

/// A `message.status` event.
pub fn status_event(
    org: &str,
    session_id: &str,
    message_id: &str,
    status: MessageStatus,
    error: Option<&MessageError>,
    wa_message_id: Option<&str>,
    chat: &str,
) -> Event {
    let data = serde_json::json!({
        "messageId": message_id, "status": status, "chat": chat, "waMessageId": wa_message_id, "error": error,
    });
    Event::new(EventType::MessageStatus, org, session_id, data)
}

/// One step of a message's progress, as the daemon records it.
pub struct Step<'a> {
    pub org: &'a str,
    pub session_id: &'a str,
    pub message_id: &'a str,
    pub chat: &'a str,
    pub wa_message_id: Option<&'a str>,
    pub status: MessageStatus,
    pub error: Option<MessageError>,
    /// The lease value (`<gateway> <fence>`) the write needs; `None` for receipts, which only
    /// ever move a message forward and may come from any connection of the number.
    pub lease: Option<String>,
    /// Recorded by a sweep rather than the session's holder: a message the holder is sending
    /// is left to it.
    pub unattended: bool,
    pub retention: crate::event_log::Retention,
}

/// What became of a [`Step`].
#[derive(Debug, PartialEq)]
pub enum Advanced {
    Moved,
    /// The message was already there or further (or is gone).
    Unchanged,
    /// The writer no longer holds the session's lease.
    Fenced,
}

/// Records a step (see [`ADVANCE`]).
pub async fn advance<R: Redis>(r: &R, step: &Step<'_>) -> Result<Advanced, ApiError> {
    let Step { org, session_id, message_id, status, .. } = *step;
    let now = crate::time::now_millis();
    let event = status_event(org, session_id, message_id, status, step.error.as_ref(), step.wa_message_id, step.chat);
    let error = match &step.error {
        Some(error) => encode(error)?,
        None => String::new(),
    };
    let leaves_outbox = matches!(status, MessageStatus::Sent | MessageStatus::Failed);
    // A receipt past `sent` also records the send, if the acknowledgement never came.
    let implied = if status.rank() > MessageStatus::Sent.rank() && status != MessageStatus::Failed { MessageStatus::Sent.time_field() } else { "" };
    let mut argv = args![
        ADVANCE, 6,
        keys::message(org, message_id), keys::session_outbox(org, session_id), keys::org_events(org), keys::session_lease(org, session_id),
        keys::message_upload(org, message_id), keys::session_uploads(org, session_id),
        status.as_str(), status.rank() as i64, status.time_field(), now, error,
        if status == MessageStatus::Failed { "1" } else { "" }, step.lease.as_deref().unwrap_or(""),
        if leaves_outbox { "1" } else { "" }, message_id, implied,
        if step.unattended { "1" } else { "" },
    ];
    argv.extend(log_events_args(org, step.retention, &[event])?);
    match first(r, "EVAL", argv).await? {
        Reply::Status(s) if s == "fenced" => Ok(Advanced::Fenced),
        Reply::Int(1) => Ok(Advanced::Moved),
        _ => Ok(Advanced::Unchanged),
    }
}

/// Fails a message WhatsApp took but can deliver to nobody (`message`: KEYS[1]; the event log
/// KEYS[2]): while it is in flight or `sent`, not once delivered; a delivery from another of the
/// recipient's devices still overturns it (see [`ADVANCE`]). `ARGV`: now, the rank of
/// `failed`, the error, the log's channel and retention, the `message.status` event.
const UNDELIVERABLE: &str = concat!(
    log_events_lua!(),
    r"
local message, log = KEYS[1], KEYS[2]
local now, failed_rank, failure, event = ARGV[1], ARGV[2], ARGV[3], ARGV[8]
local status = redis.call('HGET', message, 'status')
if status ~= 'sent' and status ~= 'queued' then return 0 end
redis.call('HSET', message, 'status', 'failed', 'rank', failed_rank, 'failedAt', now, 'updatedAt', now, 'error', failure, 'undeliverable', '1')
log_event(log, 4, event)
trim_log(log, tonumber(now), 4)
return 1"
);

/// The recipient's device told WhatsApp it cannot take the message (a receipt of type `sent`,
/// from a LID peer that lacks what the message needs): unless another device of theirs takes
/// it, it was delivered to nobody, so it fails as `undeliverable` instead of staying `sent` in
/// silence. `true` when it moved.
pub async fn undeliverable<R: Redis>(r: &R, org: &str, session_id: &str, content: &Content, wa_id: &str, retention: crate::event_log::Retention) -> Result<bool, ApiError> {
    let error = failure("undeliverable", "WhatsApp took the message, but the recipient's device cannot receive it");
    let event = status_event(org, session_id, &content.id, MessageStatus::Failed, Some(&error), Some(wa_id), &content.chat);
    let now = crate::time::now_millis();
    let mut argv = args![UNDELIVERABLE, 2, keys::message(org, &content.id), keys::org_events(org), now, MessageStatus::Failed.rank() as i64, encode(&error)?];
    argv.extend(log_events_args(org, retention, &[event])?);
    Ok(first(r, "EVAL", argv).await?.as_int() == Some(1))
}

/// What waits in a session's outbox: how many messages, and since when the oldest.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    pub depth: u64,
    pub oldest_queued_at: Option<i64>,
}

/// The outbox's length (KEYS[1]) and its head's `queuedAt` (messages under the prefix ARGV[1]).
const BACKLOG: &str = r"
local head = redis.call('LINDEX', KEYS[1], 0)
local queued_at = head and redis.call('HGET', ARGV[1] .. head, 'queuedAt')
return {redis.call('LLEN', KEYS[1]), queued_at}";

pub async fn backlog<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Backlog, ApiError> {
    let reply = r.execute("EVAL", args![BACKLOG, 1, keys::session_outbox(org, session_id), keys::message(org, "")]).await?;
    let mut items = reply.iter();
    let depth = items.next().and_then(Reply::as_int).unwrap_or(0).max(0) as u64;
    Ok(Backlog { depth, oldest_queued_at: items.next().and_then(Reply::as_int) })
}

/// Adds ARGV[1] (1 or 0) to the attempts at the message (`message`: KEYS[1]) and keeps why the
/// last one failed, when it did (ARGV[2], or ''): the attempts so far, or -1 when the message
/// is gone (it is not recreated).
const NOTE_ATTEMPT: &str = r"
local message, add, failure = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', message) == 0 then return -1 end
if failure ~= '' then redis.call('HSET', message, 'lastError', failure) end
return redis.call('HINCRBY', message, 'attempts', add)";

/// Notes an attempt at sending the message: a copy that went out (WhatsApp's answer still to
/// come), or a failure (`error`), counted or not (a copy refused was counted when it went).
/// The attempts so far; `None` when the message is gone.
pub async fn note_attempt<R: Redis>(r: &R, org: &str, message_id: &str, counts: bool, error: Option<&str>) -> Result<Option<i64>, RedisError> {
    let reply = first(r, "EVAL", args![NOTE_ATTEMPT, 1, keys::message(org, message_id), counts as i64, error.unwrap_or_default()]).await?;
    Ok(reply.as_int().filter(|n| *n >= 0))
}

/// Our id of the message the session sent with WhatsApp id `wa_message_id`.
pub async fn by_wa_id<R: Redis>(r: &R, org: &str, session_id: &str, wa_message_id: &str) -> Result<Option<String>, RedisError> {
    crate::redis::get_string(r, &keys::session_wa_message(org, session_id, wa_message_id)).await
}

/// The keys of a session's messaging state that go when the session is deleted (the messages
/// themselves, and the per-chat indexes, expire with their retention).
pub fn session_keys(org: &str, session_id: &str) -> [String; 5] {
    [
        keys::session_uploads(org, session_id),
        keys::session_outbox(org, session_id),
        keys::session_sends(org, session_id),
        keys::session_chat_sends(org, session_id),
        keys::session_messages(org, session_id),
    ]
}

/// A session's member of [`keys::outbox_deadlines`].
fn deadline_member(org: &str, session_id: &str) -> String {
    format!("{org}/{session_id}")
}

/// The queued messages of one session (`<org>/<session>`, ARGV[2], a member of the deadlines,
/// KEYS[1]; its outbox KEYS[2], its lease KEYS[3]; messages under the prefix ARGV[1]) that
/// waited past their `expiresAt` by ARGV[3] (ms): `{id, chat}` pairs, with an empty chat for a
/// message that cannot be read. At most the first ARGV[4] of the outbox are looked at; they
/// are in the order they were accepted, so the first not due says when the session is due
/// again. A message its live holder claimed (`sendingAt`) is its holder's to fail; the
/// session is looked at again a minute later. A session with nothing queued leaves the set.
const DUE: &str = r"
local deadlines, outbox, lease = KEYS[1], KEYS[2], KEYS[3]
local prefix, member, now, most = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local due, next_at = {}, nil
for _, id in ipairs(redis.call('LRANGE', outbox, 0, most - 1)) do
  local state = redis.call('HMGET', prefix .. id, 'status', 'doc', 'sendingAt')
  if state[1] == 'queued' then
    local readable, content = pcall(cjson.decode, state[2] or '')
    readable = readable and type(content) == 'table' and type(content['chat']) == 'string'
    local expires = readable and tonumber(content['expiresAt'])
    if not readable then
      table.insert(due, id)
      table.insert(due, '')
    elseif not expires then
      -- Accepted with no deadline: it waits for its turn.
    elseif state[3] and redis.call('EXISTS', lease) == 1 then
      next_at = math.min(next_at or math.huge, math.max(expires, now + 60000))
    elseif expires <= now then
      table.insert(due, id)
      table.insert(due, content['chat'])
    else
      next_at = math.min(next_at or math.huge, expires)
      break
    end
  end
end
if next_at then
  redis.call('ZADD', deadlines, next_at, member)
elseif #due == 0 and redis.call('LLEN', outbox) <= most then
  redis.call('ZREM', deadlines, member)
else
  redis.call('ZADD', deadlines, now + 1000, member)
end
return due";

/// The most messages of one outbox a sweep looks at.
const SWEEP_DEPTH: i64 = 200;

/// Fails the queued messages that waited past their `expiresAt` (or that cannot be read), in
/// sessions due by `now` (at most `sessions` of them), whoever runs the session, or nobody:
/// each fails once, with its `message.status` event, before its hash could expire. The
/// messages failed.
pub async fn sweep_expired<R: Redis>(r: &R, now: i64, sessions: usize, retention: crate::event_log::Retention) -> Result<usize, ApiError> {
    let members = r.execute("ZRANGE", args![keys::outbox_deadlines(), "-inf", now, "BYSCORE", "LIMIT", 0, sessions as i64]).await?;
    let mut failed = 0;
    for member in members.into_iter().filter_map(Reply::into_string) {
        let Some((org, session_id)) = member.rsplit_once('/') else {
            r.execute("ZREM", args![keys::outbox_deadlines(), member.as_str()]).await?;
            continue;
        };
        let argv = args![
            DUE, 3, keys::outbox_deadlines(), keys::session_outbox(org, session_id), keys::session_lease(org, session_id),
            keys::message(org, ""), member.as_str(), now, SWEEP_DEPTH,
        ];
        let due: Vec<Option<String>> = r.execute("EVAL", argv).await?.into_iter().map(Reply::into_string).collect();
        for pair in due.chunks(2) {
            let (Some(id), chat) = (&pair[0], pair.get(1).cloned().flatten().unwrap_or_default()) else { continue };
            let error = if chat.is_empty() { unreadable() } else { expired() };
            let step = Step {
                org,
                session_id,
                message_id: id,
                chat: &chat,
                wa_message_id: None,
                status: MessageStatus::Failed,
                error: Some(error),
                lease: None,
                unattended: true,
                retention,
            };
            if advance(r, &step).await? == Advanced::Moved {
                failed += 1;
            }
        }
    }
    Ok(failed)
}

/// Why a message the daemon could not send failed.
pub fn failure(code: &str, message: impl Into<String>) -> MessageError {
    MessageError { code: code.to_owned(), message: message.into() }
}

/// A queued message that waited past its `expiresAt`, whether its sender or a sweep found it.
pub fn expired() -> MessageError {
    failure("expired", "the message waited in the outbox past its maximum age; it was not sent (or not acknowledged)")
}

/// A queued message that cannot be read, whether its sender or a sweep found it.
pub fn unreadable() -> MessageError {
    failure("unreadable", "the gateway could not read the stored message; it was not sent")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scripts_keep_a_failed_message_as_long_as_the_constant_says() {
        for script in [super::CANCEL, super::ADVANCE] {
            assert!(script.contains(&format!("local FAILED_KEEP_MS = {}\n", super::FAILED_KEEP_MS)));
        }
    }
}
