//! Inbound messages in Redis: stored, indexed and announced in one script, before the daemon
//! lets WhatsApp's server know they arrived.
//!
//! WhatsApp delivers a message again when its acknowledgement was lost (a daemon killed
//! mid-batch), so each is stored once per chat, sender and WhatsApp id: a repeat finds its
//! record and is skipped, never logged twice. One exception: a message the session could not
//! decrypt is stored as `undecryptable` until WhatsApp recovers it (the sender's phone sends it
//! again, with the same id); the recovered copy then fills that record in, under the same id of
//! ours, and is announced as received.
//!
//! A contact's edit of a message they sent, or a deletion for everyone, marks the message
//! (`editedAt`, `revokedAt`) and is announced once ([`amend`]).

use crate::event::{Event, EventType};
use crate::event_log::Retention;
use crate::history::{self, index_message_lua};
use crate::media::MediaRef;
use crate::message::{Content, Direction, EDITED_AT, Message, MessageStatus, REVOKED_AT, UNDECRYPTABLE};
use crate::redis::{Arg, Redis, Reply};
use crate::store::{encode, log_events_args, log_events_lua};
use crate::{ApiError, args, keys};

/// Stores the messages not seen before, and fills in recovered ones. `KEYS`: row, event log,
/// session index, then per message: its hash, its dedupe record, its chat's index, its
/// WhatsApp-id index entry. `ARGV`: now, retention (ms), index floor, count, then per message:
/// id, WhatsApp id, content, event, media reference (or ''), `recover` (or ''); then the log's
/// channel and retention, and the rank of `received`. Answers `{autoRead, ids stored…}`, or
/// `{-1}` when the session is gone (nothing to keep them for).
const STORE: &str = concat!(
    log_events_lua!(),
    index_message_lua!(),
    r#"
local row, log, session_index = KEYS[1], KEYS[2], KEYS[3]
local raw = redis.call('GET', row)
if not raw then return {-1} end
local now, ttl, floor, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local stride, keys_at = 6, 4
local tail = 5 + stride * n
local received_rank = ARGV[tail + 4]
local out = {cjson.decode(raw)['autoRead'] == true and 1 or 0}
for i = 0, n - 1 do
  local k, a = keys_at + 4 * i, 5 + stride * i
  local message, record, chat_index, wa_index = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local id, wa_id, doc, event, media_ref, mode = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if redis.call('EXISTS', record) == 0 then
    redis.call('HSET', message, 'doc', doc, 'waId', wa_id, 'status', 'received', 'rank', received_rank, 'receivedAt', now, 'updatedAt', now)
    if media_ref ~= '' then redis.call('HSET', message, 'mediaRef', media_ref) end
    redis.call('PEXPIRE', message, ttl)
    redis.call('SET', record, id, 'PX', ttl)
    redis.call('SET', wa_index, id, 'NX', 'PX', ttl)
    index_message(session_index, chat_index, id, floor, ttl)
    log_event(log, tail, event)
    out[#out + 1] = id
  elseif mode == 'recover' then
    local stored = redis.call('HGET', message, 'doc')
    if stored and string.find(stored, '"type":"undecryptable"', 1, true) then
      redis.call('HSET', message, 'doc', doc, 'updatedAt', now)
      if media_ref ~= '' then redis.call('HSET', message, 'mediaRef', media_ref) end
      log_event(log, tail, event)
      out[#out + 1] = id
    end
  end
end
if #out > 1 then trim_log(log, tonumber(now), tail) end
return out"#
);

/// Marks a message edited or deleted for everyone and announces it, once per change (a change
/// WhatsApp delivers again is skipped). `KEYS`: the change's own dedupe record, the message
/// changed (which may not exist), the event log. `ARGV`: the change's id, the field to set,
/// now, retention (ms), the event, the log's channel and retention.
const AMEND: &str = concat!(
    log_events_lua!(),
    r"
local record, message, log = KEYS[1], KEYS[2], KEYS[3]
local id, field, now, ttl, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not redis.call('SET', record, id, 'NX', 'PX', ttl) then return 0 end
if redis.call('EXISTS', message) == 1 then redis.call('HSET', message, field, now, 'updatedAt', now) end
log_event(log, 6, event)
trim_log(log, tonumber(now), 6)
return 1"
);

/// What a contact did to a message they had sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// They edited it (WhatsApp id `target`); `text` is the new text (or caption).
    Edit { target: String, text: Option<String> },
    /// They (or a group admin) deleted it for everyone.
    Revoke { target: String },
}

/// What arrived, as the daemon hands it over: a message, or a [`Change`] to one.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// `direction: inbound`, a fresh id; `from` is the sender as WhatsApp addressed it. For a
    /// change, who made it, where and when.
    pub content: Content,
    pub wa_id: String,
    /// How to fetch its file again from WhatsApp, for a media message.
    pub media_ref: Option<MediaRef>,
    pub change: Option<Change>,
}

impl Incoming {
    pub fn message(content: Content, wa_id: String, media_ref: Option<MediaRef>) -> Incoming {
        Incoming { content, wa_id, media_ref, change: None }
    }
}

/// What storing a batch came to.
#[derive(Debug, Default, PartialEq)]
pub struct Stored {
    /// Our ids of the messages stored (or recovered) now, not those stored before.
    pub new: Vec<String>,
    /// The session reads what arrives (`autoRead`): send read receipts for the batch.
    pub auto_read: bool,
}

/// Stores a batch of inbound messages (see [`STORE`]), first resolving what they refer to
/// (the message a reply quotes, the message a reaction is for) to our ids where the session has
/// them, and finding the undecryptable ones they recover. Changes go to [`amend`].
pub async fn store<R: Redis>(
    r: &R,
    org: &str,
    session_id: &str,
    batch: &[Incoming],
    log_retention: Retention,
    retention_ms: u64,
) -> Result<Stored, ApiError> {
    let (changes, messages): (Vec<&Incoming>, Vec<&Incoming>) = batch.iter().partition(|i| i.change.is_some());
    for change in changes {
        amend(r, org, session_id, change, log_retention, retention_ms).await?;
    }
    if messages.is_empty() {
        return Ok(Stored::default());
    }
    let messages = resolve_references(r, org, session_id, messages).await?;
    let recovered = recoveries(r, org, session_id, &messages).await?;
    let now = crate::time::now_millis();
    let mut keys = args![keys::session(org, session_id), keys::org_events(org), keys::session_messages(org, session_id)];
    let mut argv = args![now, retention_ms as i64, history::floor(now, retention_ms), messages.len() as i64];
    for (Incoming { content, wa_id, media_ref, .. }, recover) in messages.iter().zip(recovered) {
        let mut content = content.clone();
        if let Some(Recovered { content: stored }) = &recover {
            // Filled in under the undecryptable record's own id, chat and sender.
            (content.id, content.chat, content.from) = (stored.id.clone(), stored.chat.clone(), stored.from.clone());
        }
        let sender = content.from.as_deref().unwrap_or_default();
        keys.extend(args![
            keys::message(org, &content.id),
            keys::session_inbound(org, session_id, &content.chat, sender, wa_id),
            keys::session_chat_messages(org, session_id, &content.chat),
            keys::session_wa_message(org, session_id, wa_id),
        ]);
        let doc = encode(&content)?;
        let event = received_event(org, &content, &doc, wa_id, now)?;
        let media_ref = match media_ref {
            Some(media_ref) => encode(media_ref)?,
            None => String::new(),
        };
        let mode = if recover.is_some() { "recover" } else { "" };
        argv.extend(args![content.id.as_str(), wa_id.as_str(), doc, encode(&event)?, media_ref, mode]);
    }
    argv.extend(log_events_args(org, log_retention, &[])?);
    argv.push(Arg::from(MessageStatus::Received.rank() as i64));
    let mut call = args![STORE, keys.len() as i64];
    call.extend(keys);
    call.extend(argv);
    let mut reply = r.execute("EVAL", call).await?.into_iter();
    let auto_read = match reply.next().and_then(|flag| flag.as_int()) {
        Some(-1) => return Ok(Stored::default()),
        flag => flag == Some(1),
    };
    Ok(Stored { new: reply.filter_map(Reply::into_string).collect(), auto_read })
}

/// `message.received`, `message.reaction` for a reaction, `message.undecryptable` for one the
/// session could not read: the Message as the API shows it.
fn received_event(org: &str, content: &Content, doc: &str, wa_id: &str, now: i64) -> Result<Event, ApiError> {
    let kind = match (&content.reaction, content.kind.as_str()) {
        (Some(_), _) => EventType::MessageReaction,
        (None, UNDECRYPTABLE) => EventType::MessageUndecryptable,
        _ => EventType::MessageReceived,
    };
    let message = Message::stored(doc, wa_id, MessageStatus::Received, now)?;
    Ok(Event::new(kind, org, &content.session_id, serde_json::to_value(&message).unwrap_or_default()))
}

/// The undecryptable record a message recovers: ours, as stored (its chat and sender name the
/// record the recovered copy fills in).
struct Recovered {
    content: Content,
}

/// For each message, the undecryptable record it recovers, if any: one still `undecryptable`
/// stored under the same chat, sender and WhatsApp id; or, failing that, the message the
/// session keeps under that WhatsApp id, when its sender is this one in either of WhatsApp's
/// addressings (a copy the phone recovers may name the chat by phone number where the
/// undecryptable one named it by LID, or the other way round).
async fn recoveries<R: Redis>(r: &R, org: &str, session_id: &str, messages: &[Incoming]) -> Result<Vec<Option<Recovered>>, ApiError> {
    let records: Vec<Arg> = messages
        .iter()
        .map(|m| Arg::from(keys::session_inbound(org, session_id, &m.content.chat, m.content.from.as_deref().unwrap_or_default(), &m.wa_id)))
        .collect();
    let found = r.execute("MGET", records).await?;
    let mut recovered = Vec::with_capacity(messages.len());
    for (message, ours) in messages.iter().zip(found.into_iter().map(Reply::into_string)) {
        if message.content.kind == UNDECRYPTABLE {
            recovered.push(None);
            continue;
        }
        let candidate = match ours {
            Some(ours) => Some(ours),
            None => crate::redis::get_string(r, &keys::session_wa_message(org, session_id, &message.wa_id)).await?,
        };
        let stored = match candidate {
            Some(ours) => crate::outbox::content(r, org, &ours).await?.map(|(content, _)| content),
            None => None,
        };
        recovered.push(stored.filter(|stored| stored.kind == UNDECRYPTABLE && same_sender(stored, &message.content)).map(|content| Recovered { content }));
    }
    Ok(recovered)
}

/// Whether two received messages come from the same sender, in any addressing either names.
fn same_sender(a: &Content, b: &Content) -> bool {
    let names = |c: &Content| -> Vec<String> {
        let sender = c.sender.as_ref();
        [c.from.clone(), sender.and_then(|s| s.phone_jid.clone()), sender.and_then(|s| s.lid.clone())].into_iter().flatten().collect()
    };
    let theirs = names(b);
    a.direction == Direction::Inbound && names(a).iter().any(|name| theirs.contains(name))
}

/// Marks the message a change is to (found by its WhatsApp id, in the same chat, received from
/// whoever may change it) and announces the change, once (see [`AMEND`]). A change to a message
/// the gateway does not have is announced all the same.
pub async fn amend<R: Redis>(r: &R, org: &str, session_id: &str, incoming: &Incoming, log_retention: Retention, retention_ms: u64) -> Result<(), ApiError> {
    let Some(change) = &incoming.change else { return Ok(()) };
    let target = match change {
        Change::Edit { target, .. } | Change::Revoke { target } => target,
    };
    let content = &incoming.content;
    let ours = crate::redis::get_string(r, &keys::session_wa_message(org, session_id, target)).await?;
    let message = match &ours {
        Some(id) => crate::outbox::content(r, org, id).await?.map(|(message, _)| message),
        None => None,
    };
    // A WhatsApp id is the sender's choice: it names this message only in this chat, received,
    // and (for an edit) from the one who edits it; a group admin may delete anyone's.
    let changeable = message.as_ref().is_some_and(|m| {
        let author = |who: &str| m.from.as_deref() == Some(who) || m.sender.as_ref().is_some_and(|s| s.phone_jid.as_deref() == Some(who) || s.lid.as_deref() == Some(who));
        let by = content.from.as_deref().unwrap_or_default();
        m.direction == Direction::Inbound && m.chat == content.chat && (author(by) || (matches!(change, Change::Revoke { .. }) && m.chat.ends_with("@g.us")))
    });
    let message_id = ours.filter(|_| changeable);
    let now = crate::time::now_millis();
    let (field, event) = match change {
        Change::Edit { text, .. } => (EDITED_AT, Event::new(EventType::MessageEdited, org, session_id, serde_json::json!({
            "messageId": message_id, "waMessageId": target, "chat": content.chat, "from": content.from, "text": text, "editedAt": now,
        }))),
        Change::Revoke { .. } => (REVOKED_AT, Event::new(EventType::MessageRevoked, org, session_id, serde_json::json!({
            "messageId": message_id, "waMessageId": target, "chat": content.chat, "by": content.from, "revokedAt": now,
        }))),
    };
    let record = keys::session_inbound(org, session_id, &content.chat, content.from.as_deref().unwrap_or_default(), &incoming.wa_id);
    let message_key = keys::message(org, message_id.as_deref().unwrap_or("-"));
    let mut call = args![AMEND, 3, record, message_key, keys::org_events(org), incoming.wa_id.as_str(), field, now, retention_ms as i64, encode(&event)?];
    call.extend(log_events_args(org, log_retention, &[])?);
    r.execute("EVAL", call).await.map(drop).map_err(ApiError::from)
}

/// Fills in our ids of the messages the batch quotes or reacts to, in one round trip.
async fn resolve_references<R: Redis>(r: &R, org: &str, session_id: &str, batch: Vec<&Incoming>) -> Result<Vec<Incoming>, ApiError> {
    let mut batch: Vec<Incoming> = batch.into_iter().cloned().collect();
    let referred = |content: &Content| -> Option<String> {
        content.reaction.as_ref().map(|r| r.wa_message_id.clone()).or_else(|| content.quoted.as_ref().map(|q| q.wa_message_id.clone()))
    };
    let wanted: Vec<(usize, String)> = batch.iter().enumerate().filter_map(|(i, m)| referred(&m.content).map(|id| (i, id))).collect();
    if wanted.is_empty() {
        return Ok(batch);
    }
    let lookup: Vec<Arg> = wanted.iter().map(|(_, wa_id)| Arg::from(keys::session_wa_message(org, session_id, wa_id))).collect();
    let found = r.execute("MGET", lookup).await?;
    for ((i, wa_id), stored) in wanted.into_iter().zip(found.into_iter().map(Reply::into_string)) {
        // A message earlier in the same batch is not stored yet.
        let ours = stored.or_else(|| batch[..i].iter().find(|m| m.wa_id == wa_id).map(|m| m.content.id.clone()));
        let content = &mut batch[i].content;
        match &mut content.reaction {
            Some(reaction) => reaction.message_id = ours,
            None => content.reply_to = ours,
        }
    }
    Ok(batch)
}
