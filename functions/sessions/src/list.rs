//! `GET /api/v1/sessions[?limit=&cursor=]`: the caller's organization's sessions, oldest first.
//! Without `limit`, all of them in one page (`nextCursor` null), as the reference says; with it,
//! pages of that size, each with the cursor of the next.

use shared::answer::{self, Answer, Page};
use shared::auth::{Caller, Capability};
use shared::spin::Context;
use shared::{ApiError, store, validate};

/// The largest page a caller may ask for.
const MAX_LIMIT: u32 = 500;

pub async fn apply(ctx: &Context, caller: &Caller, query: Option<&str>) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let params = validate::query_params(query, &["limit", "cursor"])?;
    let param = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let limit = match param("limit") {
        Some(_) => Some(validate::page_limit(param("limit"), MAX_LIMIT, MAX_LIMIT)? as usize),
        None => None,
    };
    let after = param("cursor").map(answer::position).transpose()?;
    if after.as_deref().is_some_and(|a| a.parse::<f64>().is_err()) {
        return Err(ApiError::invalid_field("cursor", "is not a cursor this endpoint returned"));
    }
    let (mut sessions, next) = store::page(&ctx.redis, org, after.as_deref(), limit).await?;
    store::observe(&ctx.redis, &mut sessions).await?;
    Ok(Answer::ok(&Page { data: sessions, next_cursor: next.map(|n| answer::cursor(&n)) }))
}
