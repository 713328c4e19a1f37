//! `PATCH /api/v1/webhooks/{webhook}`: changes any of `url`, `events`, `sessions`, `enabled`,
//! `description`. New filters apply to events queued from then on; a disabled endpoint keeps its
//! place in the log and catches up when enabled again.

use shared::answer::Answer;
use shared::config;
use shared::spin::{Context, SpinVariables};
use shared::webhook::{self, Settings};
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, id: &str, body: &[u8]) -> Result<Answer, ApiError> {
    webhook::get(&ctx.redis, org, id).await?;
    let settings = Settings::for_update(body, config::webhook_allow_private(&SpinVariables).await)?;
    Ok(Answer::ok(&webhook::update(&ctx.redis, org, id, &settings).await?))
}
