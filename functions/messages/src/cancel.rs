//! `DELETE /api/v1/sessions/{session}/messages/{message}`: cancels a message no daemon has
//! begun sending (204); once it is on its way or done, 409.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::spin::{Context, SpinVariables};
use shared::{ApiError, config, outbox, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str, message_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Send)?;
    store::get(&ctx.redis, org, session_id).await?;
    let message = outbox::get(&ctx.redis, org, session_id, message_id).await?;
    outbox::cancel(&ctx.redis, &message, org, config::event_retention(&SpinVariables).await).await?;
    Ok(Answer::NoContent)
}
