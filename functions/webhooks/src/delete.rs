//! `DELETE /api/v1/webhooks/{webhook}`: removes the endpoint with its queue and dead letters (204).

use shared::answer::Answer;
use shared::spin::Context;
use shared::webhook;
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, id: &str) -> Result<Answer, ApiError> {
    webhook::delete(&ctx.redis, org, id).await?;
    Ok(Answer::NoContent)
}
