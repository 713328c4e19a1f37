//! `POST /api/v1/webhooks/{webhook}:redeliver`: every dead letter goes back to the front of its
//! session's queue, in order, due now (202 with how many).

use shared::answer::Answer;
use shared::spin::Context;
use shared::webhook;
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, id: &str) -> Result<Answer, ApiError> {
    let redelivered = webhook::redeliver(&ctx.redis, org, id).await?;
    Ok(Answer::accepted(&serde_json::json!({ "redelivered": redelivered })))
}
