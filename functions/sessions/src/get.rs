//! `GET /api/v1/sessions/{session}`: one session of the caller's organization.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::Context;
use shared::{ApiError, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    Ok(Answer::ok(&store::get_observed(&ctx.redis, org, session_id).await?))
}
