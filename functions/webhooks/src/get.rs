//! `GET /api/v1/webhooks/{webhook}`: the endpoint and its health (last success, last failure
//! and why, backlog, dead letters).

use shared::answer::Answer;
use shared::spin::Context;
use shared::webhook;
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, id: &str) -> Result<Answer, ApiError> {
    Ok(Answer::ok(&webhook::get(&ctx.redis, org, id).await?))
}
