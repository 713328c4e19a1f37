//! `GET /api/v1/sessions/{session}/me`: the identity of the attached number (JID, LID, phone
//! number, push name) and whether it is connected right now; 404 until paired.

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::session::SessionStatus;
use shared::spin::Context;
use shared::{ApiError, ErrorCode, store};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let session = store::get_observed(&ctx.redis, org, session_id).await?;
    if !session.is_paired() {
        return Err(ApiError::new(ErrorCode::NotFound, "no number is attached to this session yet")
            .with_detail("reason", "not_paired"));
    }
    Ok(Answer::ok(&serde_json::json!({
        "connected": session.status == SessionStatus::Working,
        "phoneNumber": session.phone_number,
        "pushName": session.push_name,
        "sessionId": session.id,
        "status": session.status,
        "waJid": session.wa_jid,
        "waLid": session.wa_lid,
    })))
}
