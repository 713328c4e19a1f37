//! `GET /api/v1/webhooks/{webhook}/dead-letters[?limit=&cursor=]`: the events given up on, oldest
//! first, each with why and after how many attempts.

use shared::answer::{self, Answer};
use shared::spin::Context;
use shared::{validate, webhook};
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, id: &str, query: Option<&str>) -> Result<Answer, ApiError> {
    let params = validate::query_params(query, &["limit", "cursor"])?;
    let param = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let limit = validate::page_limit(param("limit"), 50, 500)?;
    let after = param("cursor").map(answer::position).transpose()?;
    Ok(Answer::ok(&webhook::dead_letters(&ctx.redis, org, id, after.as_deref(), limit).await?))
}
