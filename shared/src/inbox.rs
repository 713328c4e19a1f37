//! Inbound messages in Redis: stored, indexed and announced in one script, before the daemon
//! lets WhatsApp's server know they arrived.
//!
//! WhatsApp delivers a message again when its acknowledgement was lost (a daemon killed
//! mid-batch), so each is stored once per chat, sender and WhatsApp id: a repeat finds its
//! record and is skipped, never logged twice.

use crate::event::{Event, EventType};
use crate::event_log::Retention;
use crate::history::{self, index_message_lua};
use crate::media::MediaRef;
use crate::message::{Content, Message, MessageStatus};
use crate::redis::{Arg, Redis, Reply};
use crate::store::{encode, log_events_args, log_events_lua};
use crate::{ApiError, args, keys};

/// Stores the messages not seen before. `KEYS`: row, event log, session index, then per
/// message: its hash, its dedupe record, its chat's index, its WhatsApp-id index entry.
/// `ARGV`: now, retention (ms), index floor, count, then per message: id, WhatsApp id,
/// content, event, media reference (or ''); then the log's channel and retention. Answers `{autoRead, stored ids…}`,
/// or `{-1}` when the session is gone (nothing to keep them for).
const STORE: &str = concat!(
    log_events_lua!(),
    index_message_lua!(),
    r"
local raw = redis.call('GET', KEYS[1])
if not raw then return {-1} end
local now, ttl, floor, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local log_at = 5 + 5 * n
local out = {cjson.decode(raw)['autoRead'] == true and 1 or 0}
for i = 0, n - 1 do
  local k, a = 4 + 4 * i, 5 + 5 * i
  if redis.call('EXISTS', KEYS[k + 1]) == 0 then
    redis.call('HSET', KEYS[k], 'doc', ARGV[a + 2], 'waId', ARGV[a + 1], 'status', 'received', 'rank', ARGV[log_at + 3],
      'receivedAt', now, 'updatedAt', now)
    if ARGV[a + 4] ~= '' then redis.call('HSET', KEYS[k], 'mediaRef', ARGV[a + 4]) end
    redis.call('PEXPIRE', KEYS[k], ttl)
    redis.call('SET', KEYS[k + 1], ARGV[a], 'PX', ttl)
    redis.call('SET', KEYS[k + 3], ARGV[a], 'NX', 'PX', ttl)
    index_message(KEYS[3], KEYS[k + 2], ARGV[a], floor, ttl)
    log_event(KEYS[2], ARGV[log_at], ARGV[a + 3])
    out[#out + 1] = ARGV[a]
  end
end
if #out > 1 then trim_log(KEYS[2], tonumber(now), tonumber(ARGV[log_at + 1]), tonumber(ARGV[log_at + 2])) end
return out"
);

/// A message that arrived, as the daemon hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// `direction: inbound`, a fresh id; `from` is the sender as WhatsApp addressed it.
    pub content: Content,
    pub wa_id: String,
    /// How to fetch its file again from WhatsApp, for a media message.
    pub media_ref: Option<MediaRef>,
}

/// What storing a batch came to.
#[derive(Debug, Default, PartialEq)]
pub struct Stored {
    /// Our ids of the messages stored now (not those stored before).
    pub new: Vec<String>,
    /// The session reads what arrives (`autoRead`): send read receipts for the batch.
    pub auto_read: bool,
}

/// Stores a batch of inbound messages (see [`STORE`]), first resolving what they refer to
/// (the message a reply quotes, the message a reaction is for) to our ids where the session has
/// them.
pub async fn store<R: Redis>(
    r: &R,
    org: &str,
    session_id: &str,
    batch: &[Incoming],
    log_retention: Retention,
    retention_ms: u64,
) -> Result<Stored, ApiError> {
    if batch.is_empty() {
        return Ok(Stored::default());
    }
    let batch = resolve_references(r, org, session_id, batch).await?;
    let now = crate::time::now_millis();
    let mut keys = args![keys::session(org, session_id), keys::org_events(org), keys::session_messages(org, session_id)];
    let mut argv = args![now, retention_ms as i64, history::floor(now, retention_ms), batch.len() as i64];
    for Incoming { content, wa_id, media_ref } in &batch {
        let sender = content.from.as_deref().unwrap_or_default();
        keys.extend(args![
            keys::message(org, &content.id),
            keys::session_inbound(org, session_id, &content.chat, sender, wa_id),
            keys::session_chat_messages(org, session_id, &content.chat),
            keys::session_wa_message(org, session_id, wa_id),
        ]);
        let doc = encode(content)?;
        let event = received_event(org, content, &doc, wa_id, now)?;
        let media_ref = match media_ref {
            Some(media_ref) => encode(media_ref)?,
            None => String::new(),
        };
        argv.extend(args![content.id.as_str(), wa_id.as_str(), doc, encode(&event)?, media_ref]);
    }
    argv.extend(log_events_args(org, Some(log_retention), &[])?);
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

/// `message.received`, or `message.reaction` for a reaction: the Message as the API shows it.
fn received_event(org: &str, content: &Content, doc: &str, wa_id: &str, now: i64) -> Result<Event, ApiError> {
    let kind = if content.reaction.is_some() { EventType::MessageReaction } else { EventType::MessageReceived };
    let message = Message::stored(doc, wa_id, MessageStatus::Received, now)?;
    Ok(Event::new(kind, org, &content.session_id, serde_json::to_value(&message).unwrap_or_default()))
}

/// Fills in our ids of the messages the batch quotes or reacts to, in one round trip.
async fn resolve_references<R: Redis>(r: &R, org: &str, session_id: &str, batch: &[Incoming]) -> Result<Vec<Incoming>, ApiError> {
    let mut batch = batch.to_vec();
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
