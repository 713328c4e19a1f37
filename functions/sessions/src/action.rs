//! `POST /api/v1/sessions/{session}:start | :stop | :restart | :logout`: queue the lifecycle
//! command, give the daemon a moment to carry it out, answer with the row as it then stands.
//! The reconnect itself is asynchronous: a command no daemon has taken yet stays queued and is
//! carried out when one starts.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::command::{Command, CommandKind};
use shared::session::{Session, SessionStatus};
use shared::spin::{Context, SpinVariables, Wait};
use shared::{ApiError, config, lifecycle, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str, kind: CommandKind) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let session = store::get_observed(&ctx.redis, org, session_id).await?;
    if changes_nothing(kind, &session) {
        return Ok(Answer::ok(&session));
    }
    let command = Command::new(kind, &session.id, org);
    lifecycle::send(&ctx.redis, &session, &command, config::event_retention(&SpinVariables).await).await?;
    ctx.wait_for_result(org, &command.id, Wait::Command).await?;
    Ok(Answer::ok(&store::get_observed(&ctx.redis, org, session_id).await?))
}

/// Stopping a stopped session, or logging out one with no number attached and no client
/// running, is a harmless no-op: nothing is queued.
fn changes_nothing(kind: CommandKind, session: &Session) -> bool {
    match kind {
        CommandKind::Stop => session.status == SessionStatus::Stopped,
        CommandKind::Logout => !session.is_paired() && !session.status.is_running(),
        _ => false,
    }
}
