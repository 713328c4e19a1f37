//! `GET /api/v1/sessions/{session}/messages/{message}/media`: the file of a media message, sent
//! or received, decrypted, with its content type.
//!
//! Served from the cache when it is there (or, for a file given inline and not yet sent, from
//! what the gateway keeps to send it); otherwise the daemon running the session fetches it
//! from WhatsApp (one fetch per message however many ask) and this waits for it, polling as
//! the lifecycle endpoints do, so no connection is pinned by a blocking read.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::{Context, SpinVariables};
use shared::{ApiError, ErrorCode, config, media, outbox, store};
use std::time::Duration;

/// How long a client may keep a file: a message's file never changes.
const CACHE_SECS: u32 = 3_600;

/// How often a waiting request looks for the file.
const POLL: Duration = Duration::from_millis(25);

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str, message_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Read)?;
    let session = store::get(&ctx.redis, org, session_id).await?;
    let message = outbox::get(&ctx.redis, org, session_id, message_id).await?;
    let Some(file) = &message.content.media else {
        return Err(ApiError::new(ErrorCode::NotFound, "this message carries no media file").with_detail("reason", "no_media"));
    };
    let content_type = shared::message::content_type(file.mime_type.as_deref());
    // A file sent from inline data is at hand until sent, and cached once sent.
    if let Some(body) = media::cached(&ctx.redis, org, message_id).await? {
        return Ok(Answer::File { content_type, body, max_age_secs: CACHE_SECS });
    }
    if let Some(body) = media::upload(&ctx.redis, org, message_id).await? {
        return Ok(Answer::File { content_type, body, max_age_secs: CACHE_SECS });
    }
    let wait_ms = config::media_wait_ms(&SpinVariables).await;
    media::request(&ctx.redis, &session, message_id, wait_ms).await?;
    for _ in 0..=wait_ms.div_ceil(POLL.as_millis() as u64) {
        if let Some(outcome) = media::look(&ctx.redis, org, message_id).await? {
            outcome?;
            // Cached a moment ago; gone again only if its TTL is shorter than a request.
            let body = media::cached(&ctx.redis, org, message_id).await?.ok_or_else(|| ApiError::new(ErrorCode::Timeout, "the file left the cache; try again"))?;
            return Ok(Answer::File { content_type, body, max_age_secs: CACHE_SECS });
        }
        spin_sdk::time::sleep(POLL).await;
    }
    Err(ApiError::new(ErrorCode::Timeout, format!("the session's gateway did not fetch the file within {wait_ms} ms; try again")))
}
