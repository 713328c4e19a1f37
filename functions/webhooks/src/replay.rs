//! `POST /api/v1/webhooks/{webhook}:replay` with `{"after": "<log position>"}` or
//! `{"since": <epoch ms>}`: the endpoint receives again every event the organization's log
//! still holds from there (202); from a position past the newest event, nothing, and it goes on
//! from the newest. The answer names where it goes on from (`after`) and the oldest position
//! the log holds, so a caller can tell when what it asked for is older than the retention.

use shared::answer::Answer;
use shared::spin::Context;
use shared::webhook;
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, id: &str, body: &[u8]) -> Result<Answer, ApiError> {
    let after = webhook::replay_position(body)?;
    let (at, oldest) = webhook::replay(&ctx.redis, org, id, &after).await?;
    Ok(Answer::accepted(&serde_json::json!({ "after": at, "oldestRetained": oldest })))
}
