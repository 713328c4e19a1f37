//! `GET /api/v1/sessions/{session}/messages`: the session's messages both ways, newest first,
//! one page at a time (`?limit=` 1–100, default 50; `?cursor=` from the previous page's
//! `nextCursor`), optionally of one chat (`?chat=`, a phone number or a JID) and one
//! direction (`?direction=inbound|outbound`).

use shared::answer::{Answer, Page};
use shared::auth::{Caller, Capability};
use shared::history::{self, Filter};
use shared::message::{Direction, chat_jid};
use shared::spin::Context;
use shared::{ApiError, store, validate};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 100;

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str, query: Option<&str>) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Read)?;
    let params = validate::query_params(query, &["limit", "cursor", "chat", "direction"])?;
    let param = |name: &str| params.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let limit = validate::page_limit(param("limit"), DEFAULT_LIMIT, MAX_LIMIT)?;
    let filter = Filter {
        chat: param("chat")
            .map(|chat| chat_jid(chat).ok_or_else(|| ApiError::invalid_field("chat", "must be a phone number in international format or a JID")))
            .transpose()?,
        direction: param("direction")
            .map(|d| Direction::parse(d).ok_or_else(|| ApiError::invalid_field("direction", "must be inbound or outbound")))
            .transpose()?,
    };
    let session = store::get(&ctx.redis, org, session_id).await?;
    let (data, next_cursor) = history::page(&ctx.redis, org, &session.id, &filter, param("cursor"), limit).await?;
    Ok(Answer::ok(&Page { data, next_cursor }))
}
