//! `POST /api/v1/sessions`: a new, unpaired session; `start: true` also asks a daemon to begin
//! pairing (the row answers `starting`, announced on the event stream like any start).
//! Not idempotent: each call creates a distinct session.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::command::{Command, CommandKind};
use shared::spin::Context;
use shared::{ApiError, lifecycle, store, time, validate};

pub async fn apply(ctx: &Context, caller: &Caller, body: &[u8]) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let new = validate::new_session(body)?;
    let start = new.start;
    let session = new.into_session(org, Some(caller.user_id.clone()), time::now_millis());
    store::create(&ctx.redis, &session).await?;
    if !start {
        return Ok(Answer::created(&session));
    }
    // No gateway holds a new session yet: the command goes to the placement stream.
    let started = lifecycle::send(&ctx.redis, &session, &Command::new(CommandKind::Start, &session.id, org)).await?;
    Ok(Answer::created(&started))
}
