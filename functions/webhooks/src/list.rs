//! `GET /api/v1/webhooks`: the organization's endpoints with their health, oldest first.

use shared::answer::{Answer, Page};
use shared::spin::Context;
use shared::webhook;
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str) -> Result<Answer, ApiError> {
    Ok(Answer::ok(&Page { data: webhook::list(&ctx.redis, org).await?, next_cursor: None }))
}
