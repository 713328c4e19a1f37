//! `DELETE /api/v1/sessions/{session}`: removes the row and everything kept for it at once, and
//! in the same step tells the daemon that held it to disconnect and wipe the session's store.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::command::{Command, CommandKind};
use shared::spin::Context;
use shared::{ApiError, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    store::delete(&ctx.redis, org, session_id, &Command::new(CommandKind::Delete, session_id, org)).await?;
    Ok(Answer::NoContent)
}
