//! `POST /api/v1/sessions`: a new, unpaired session; `start: true` also asks a daemon to begin
//! pairing (the row answers `starting`, announced on the event stream like any start).
//! Not idempotent: each call creates a distinct session. An organization has at most
//! `max_sessions_per_org` sessions (409 `conflict`, `reason: session_quota`, beyond).

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::{Context, SpinVariables};
use shared::{ApiError, config, lifecycle, time, validate};

pub async fn apply(ctx: &Context, caller: &Caller, body: &[u8]) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let new = validate::new_session(body)?;
    let start = new.start;
    let session = new.into_session(org, Some(caller.user_id.clone()), time::now_millis());
    // No gateway holds a new session yet: a start goes to the placement stream.
    let quota = config::max_sessions_per_org(&SpinVariables).await;
    Ok(Answer::created(&lifecycle::create(&ctx.redis, session, quota, start, config::event_retention(&SpinVariables).await).await?))
}
