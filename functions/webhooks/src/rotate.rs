//! `POST /api/v1/webhooks/{webhook}:rotate-secret`: a new signing secret, shown once. The old one
//! keeps signing beside it for `webhook_secret_overlap_secs`, so receivers switch at their pace.

use shared::answer::Answer;
use shared::config;
use shared::spin::{Context, SpinVariables};
use shared::webhook;
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, id: &str) -> Result<Answer, ApiError> {
    let overlap_ms = config::webhook_secret_overlap_ms(&SpinVariables).await;
    Ok(Answer::ok(&webhook::rotate(&ctx.redis, org, id, overlap_ms).await?))
}
