//! `GET /api/v1/sessions/{session}/outbox`: what the session still has to send (`depth`) and
//! since when the oldest waits (`oldestQueuedAt`), so a client sees a backlog building.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::Context;
use shared::{ApiError, outbox, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Read)?;
    let session = store::get(&ctx.redis, org, session_id).await?;
    Ok(Answer::ok(&outbox::backlog(&ctx.redis, org, &session.id).await?))
}
