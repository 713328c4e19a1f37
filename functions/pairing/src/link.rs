//! `POST /api/v1/sessions/{session}/pairing-link`: a short-lived link to the pairing page for
//! this session (201 `{url, expiresAt}`), to send to whoever holds the phone. It starts pairing
//! when nothing runs the session yet, so the page has a code to show.
//! `DELETE …/pairing-link`: revokes every link minted for the session so far (204), say one
//! sent to the wrong person.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::{Context, SpinVariables};
use shared::{ApiError, config, pairing_link, store, validate};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let session = store::get_observed(&ctx.redis, org, session_id).await?;
    validate::unpaired(&session)?;
    let ttl_secs = config::pairing_link_ttl_secs(&SpinVariables).await;
    let (token, link) = pairing_link::mint(&ctx.redis, org, &session.id, ttl_secs).await?;
    crate::qr::start_pairing(ctx, &session).await?;
    let url = format!("/pair/{}?token={token}", session.id);
    Ok(Answer::created(&serde_json::json!({ "url": url, "expiresAt": link.expires_at })))
}

pub async fn revoke(ctx: &Context, caller: &Caller, session_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let session = store::get(&ctx.redis, org, session_id).await?;
    pairing_link::revoke(&ctx.redis, org, &session.id).await?;
    Ok(Answer::NoContent)
}
