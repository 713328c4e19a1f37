//! `GET /api/v1/sessions`: the caller's organization's sessions in one page.

use shared::answer::{Answer, Page};
use shared::auth::{Caller, Capability};
use shared::spin::Context;
use shared::{ApiError, store};

pub async fn apply(ctx: &Context, caller: &Caller) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let mut sessions = store::list(&ctx.redis, org).await?;
    store::observe(&ctx.redis, &mut sessions).await?;
    // `nextCursor` is always null: the reference keeps it for forward compatibility.
    Ok(Answer::ok(&Page { data: sessions, next_cursor: None }))
}
