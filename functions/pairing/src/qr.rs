//! `GET /api/v1/sessions/{session}/qr`: the current pairing QR `{code, expiresAt}`, or the code
//! as a PNG or SVG image (`?format=`, `Accept`). With no code ready it starts pairing (when
//! nothing runs yet) and answers 404 until the daemon has one.

use crate::image::Format;
use shared::answer::Answer;
use shared::auth::{Caller, Capability};
use shared::command::{Command, CommandKind};
use shared::session::{Session, SessionStatus};
use shared::spin::{Context, SpinVariables};
use shared::{ApiError, ErrorCode, config, lifecycle, store, validate};

pub async fn apply(ctx: &Context, caller: &Caller, session_id: &str, format: Format) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Manage)?;
    let session = store::get_observed(&ctx.redis, org, session_id).await?;
    validate::unpaired(&session)?;
    // Only a code that a live client shows: a dead gateway's last code scans into nothing.
    if session.status == SessionStatus::ScanQrCode {
        if let Some(qr) = store::qr(&ctx.redis, org, session_id).await? {
            return match format {
                Format::Json => Ok(Answer::ok(&qr)),
                image => {
                    let code = qr["code"].as_str().ok_or_else(|| ApiError::internal("the stored QR code has no code"))?;
                    crate::image::render(code, image)
                }
            };
        }
    }
    start_pairing(ctx, &session).await?;
    Err(ApiError::new(ErrorCode::NotFound, "no QR code is ready yet: pairing has started, retry shortly or follow auth.qr events")
        .with_detail("reason", "qr_not_ready"))
}

/// Starts the session when nothing runs it yet, so a QR code comes.
pub async fn start_pairing(ctx: &Context, session: &Session) -> Result<(), ApiError> {
    if !session.status.is_running() {
        let start = Command::new(CommandKind::Start, &session.id, &session.organization_id);
        lifecycle::send(&ctx.redis, session, &start, config::event_retention(&SpinVariables).await).await?;
    }
    Ok(())
}
