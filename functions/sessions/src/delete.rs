//! `DELETE /api/v1/sessions/{session}`: removes the row at once and tells the daemon that held
//! it to disconnect and wipe the session's store.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::command::{Command, CommandKind};
use shared::spin::Context;
use shared::{ApiError, lifecycle, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let session = store::delete(&ctx.redis, org, session_id).await?;
    lifecycle::send(&ctx.redis, &session, &Command::new(CommandKind::Delete, &session.id, org)).await?;
    Ok(Answer::NoContent)
}
