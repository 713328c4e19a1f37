//! `POST /api/v1/sessions/{session}/pairing-code` `{"phone": "628123456789"}`: asks WhatsApp for
//! a code to type on that phone instead of scanning a QR, waiting a bounded time for it.
//! Each request makes WhatsApp prompt that phone, so requests are limited per session, per
//! phone number within the organization, and per phone number across the deployment (so no
//! tenant can prompt a stranger's phone in a loop, nor use up another tenant's attempts).

use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::command::{Command, CommandResult};
use shared::spin::{Context, SpinVariables, Wait};
use shared::rate_limit::{self, Limit};
use shared::{ApiError, ErrorCode, config, lifecycle, store, validate};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str, body: &[u8]) -> Result<Answer, ApiError> {
    request(ctx, caller.org_with(Capability::Manage)?, session_id, body).await
}

/// The request for the organization's session, however the caller was let in (a `manage`
/// caller, or the session's pairing link).
pub async fn request(ctx: &Context, org: &str, session_id: &str, body: &[u8]) -> Result<Answer, ApiError> {
    let session = store::get(&ctx.redis, org, session_id).await?;
    let phone = validate::pairing_phone(body)?;
    validate::unpaired(&session)?;
    const HOUR: u64 = 3_600;
    let per_hour = config::pairing_codes_per_hour(&SpinVariables).await;
    let org_phone = format!("{org}/{phone}");
    let limits = [
        Limit { scope: "pairing_code_session", subject: &session.id, limit: per_hour.per_session, message: "too many pairing codes were requested for this session; wait for the window to pass" },
        Limit { scope: "pairing_code_phone", subject: &org_phone, limit: per_hour.per_phone, message: "too many pairing codes were requested for this phone number; wait for the window to pass" },
        Limit { scope: "pairing_code_phone_total", subject: &phone, limit: per_hour.per_phone_total, message: "this phone number was prompted too often; wait for the window to pass" },
    ];
    rate_limit::hit(&ctx.redis, &limits, HOUR).await?;
    let command = Command::pair_phone(&session.id, org, &phone);
    lifecycle::send(&ctx.redis, &session, &command, config::event_retention(&SpinVariables).await).await?;
    match ctx.wait_for_result(org, &command.id, Wait::PairingCode).await? {
        Some(CommandResult { code: Some(code), .. }) => Ok(Answer::ok(&serde_json::json!({ "code": code }))),
        Some(CommandResult { error: Some(error), .. }) if error.kind == "already_paired" => Err(validate::already_paired()),
        // The session was stopped (or logged out, deleted) while the code was on its way.
        Some(CommandResult { error: Some(error), .. }) if error.kind == "interrupted" => {
            Err(ApiError::new(ErrorCode::Conflict, error.message).with_detail("reason", "interrupted"))
        }
        Some(CommandResult { error, .. }) => {
            let (kind, message) = error.map(|e| (e.kind, e.message)).unwrap_or_default();
            Err(ApiError::new(ErrorCode::Unavailable, format!("WhatsApp did not issue a pairing code: {message}"))
                .with_detail("reason", kind))
        }
        None => Err(ApiError::new(ErrorCode::Timeout, "no pairing code arrived in time; the request stays queued, retry shortly")
            .with_detail("reason", "pairing_code_timeout")),
    }
}
