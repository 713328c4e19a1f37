//! `GET /api/v1/sessions/{session}/messages/{message}`: one message, where it got and when.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::Context;
use shared::{ApiError, outbox, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str, message_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Read)?;
    store::get(&ctx.redis, org, session_id).await?;
    Ok(Answer::ok(&outbox::get(&ctx.redis, org, session_id, message_id).await?))
}
