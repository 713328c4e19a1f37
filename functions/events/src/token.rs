//! `POST /api/v1/events/token`: a short-lived, single-use token for one event stream, for
//! clients that cannot send an Authorization header (a browser's `EventSource`).

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::{Context, SpinVariables};
use shared::{ApiError, config, stream_token};

pub async fn apply(ctx: &Context, caller: &Caller) -> Result<Answer, ApiError> {
    let org = caller.org_with_any(&[Capability::Read, Capability::Manage])?;
    let (token, expires_at) = stream_token::mint(&ctx.redis, caller, org, config::stream_token_ttl_secs(&SpinVariables).await).await?;
    Ok(Answer::created(&serde_json::json!({ "token": token, "expiresAt": expires_at })))
}
