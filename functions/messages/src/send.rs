//! `POST /api/v1/sessions/{session}/messages`: accepts a message for the session to send, 202
//! with the Message once it is durable in the session's outbox. The daemon running the session
//! sends it in order, within the session's rate limits; a stopped or reconnecting session keeps
//! it queued until it runs again or the message expires.
//!
//! A file given inline (base64 `data`) is stored with the message, in the same step; one given
//! by URL is fetched by the daemon when the message goes out.
//!
//! An organization's sessions accept `org_messages_per_minute` messages a minute together
//! (`shared::quota`), counted with the acceptance itself.
//!
//! With an `Idempotency-Key`, a repeat within 24 h answers the message the first request made
//! (never a second send); the same key with another body is a conflict.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::message::{Content, Direction, MediaSource, Quote, Reaction, new_wa_message_id, send_request};
use shared::outbox::{self, Accepted};
use shared::quota::{self, MessageWindow};
use shared::slots::Slot;
use shared::spin::{Context, SpinVariables};
use shared::{ApiError, ErrorCode, config, secret, store};

/// The organization's window of messages for this minute; 429 when it is full.
pub async fn window(ctx: &Context, caller: &Caller) -> Result<MessageWindow, ApiError> {
    let org = caller.org_with(Capability::Send)?;
    quota::messages(&ctx.redis, &SpinVariables, org, shared::time::now_millis()).await
}

pub async fn apply(
    ctx: &Context,
    caller: &Caller,
    session_id: &str,
    idempotency_key: Option<&str>,
    body: &[u8],
    window: &MessageWindow,
) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Send)?;
    let session = store::get(&ctx.redis, org, session_id).await?;
    let limits = config::message_limits(&SpinVariables).await;
    let request = send_request(body, limits.media_max_bytes as usize)?;
    let quoted = match &request.reply_to {
        Some(id) => Some(quoted(ctx, org, session_id, id).await?),
        None => None,
    };
    let reaction = match &request.reaction {
        Some((id, emoji)) => Some(reaction(ctx, org, session_id, &request.to, id, emoji).await?),
        None => None,
    };
    let (media, file) = match request.media {
        Some((media, MediaSource::Data(bytes))) => (Some(media), Some(bytes)),
        Some((media, MediaSource::Url)) => (Some(media), None),
        None => (None, None),
    };
    let now = shared::time::now_millis();
    let content = Content {
        id: ulid::Ulid::new().to_string(),
        session_id: session.id.clone(),
        direction: Direction::Outbound,
        chat: request.to.clone(),
        from: session.wa_jid.clone(),
        to: Some(request.to),
        kind: request.kind.to_owned(),
        text: request.text,
        location: request.location,
        reaction,
        media,
        reply_to: request.reply_to,
        quoted,
        mentions: request.mentions,
        sender: None,
        created_at: now,
        expires_at: Some(now + limits.max_queued_ms as i64),
    };
    let (key_hash, body_hash) = (idempotency_key.map(secret::sha256_hex), secret::sha256_hex(body));
    let idempotency = key_hash.as_deref().map(|key| (key, body_hash.as_str()));
    let message_id = match outbox::accept(&ctx.redis, &session, &content, file.as_deref(), &new_wa_message_id(), idempotency, limits, window).await? {
        Accepted::New(message) => return Ok(Answer::accepted(&message)),
        Accepted::Seen { message_id, body_hash: first_body } if first_body == body_hash => message_id,
        Accepted::Seen { .. } => {
            return Err(ApiError::new(ErrorCode::Conflict, "this Idempotency-Key was used with another request body")
                .with_detail("reason", "idempotency_key_reused")
                .with_detail("field", "Idempotency-Key"));
        }
    };
    Ok(Answer::accepted(&outbox::get(&ctx.redis, org, session_id, &message_id).await?))
}

/// How long a send with a file may hold its slot before it lapses (a client that stalls).
const LARGE_SLOT_MS: u64 = 120_000;

/// A send whose body is past the usual limit (or of undeclared length) carries a file: it holds
/// one of its organization's slots for such requests while it is read and stored, or is
/// refused (429) before its body is read.
pub async fn large_slot(ctx: &Context, caller: &Caller, declared: Option<u64>) -> Result<Option<Slot>, ApiError> {
    let usual = config::max_body_bytes(&SpinVariables).await as u64;
    if declared.is_some_and(|length| length <= usual) {
        return Ok(None);
    }
    let org = caller.org_with(Capability::Send)?;
    let limits = config::large_request_limits(&SpinVariables).await;
    Slot::large_request(&ctx.redis, org, limits, LARGE_SLOT_MS).await.map(Some)
}

/// The largest body a send takes: room for a file of `media_max_bytes` in base64, beside the
/// usual limit for the rest.
pub async fn body_limit() -> usize {
    let file = config::media_max_bytes(&SpinVariables).await as usize;
    config::max_body_bytes(&SpinVariables).await + file.div_ceil(3) * 4
}

/// The message a reaction is for: one of this session's in the chat the reaction goes to.
async fn reaction(ctx: &Context, org: &str, session_id: &str, chat: &str, message_id: &str, emoji: &str) -> Result<Reaction, ApiError> {
    let unknown = unknown_message("reaction.messageId", "no such message in this chat of the session");
    let (target, wa_message_id) = referred(ctx, org, session_id, Some(chat), message_id, unknown).await?;
    Ok(Reaction { wa_message_id, message_id: Some(target.id), participant: target.from, emoji: emoji.to_owned() })
}

/// The message a reply quotes: one of this session's, known to WhatsApp by its id.
async fn quoted(ctx: &Context, org: &str, session_id: &str, message_id: &str) -> Result<Quote, ApiError> {
    let unknown = unknown_message("replyTo", "no such message in this session");
    let (original, wa_message_id) = referred(ctx, org, session_id, None, message_id, unknown).await?;
    let text = original.text.clone().or_else(|| original.media.as_ref().and_then(|m| m.caption.clone()));
    Ok(Quote { wa_message_id, participant: original.from, chat: Some(original.chat), kind: Some(original.kind), text })
}

/// 404 for a message a request names that is not (or no longer) one of the session's: like any
/// resource it cannot reach, it is not found, and the field says which.
fn unknown_message(field: &str, message: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("{field}: {message}")).with_detail("field", field).with_detail("reason", "message_not_found")
}

/// A message of the session (in `chat`, when given) that another refers to, with the id
/// WhatsApp knows it by; `unknown` when there is none.
async fn referred(ctx: &Context, org: &str, session_id: &str, chat: Option<&str>, message_id: &str, unknown: ApiError) -> Result<(Content, String), ApiError> {
    match outbox::content(&ctx.redis, org, message_id).await? {
        Some((message, Some(wa_id))) if message.session_id == session_id && chat.is_none_or(|chat| message.chat == chat) => Ok((message, wa_id)),
        _ => Err(unknown),
    }
}
