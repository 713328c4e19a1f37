//! `POST /api/v1/admin/sessions/{session}/backfill`: start a backfill (202 with the job), and
//! `GET` on the same path: the latest job. One job runs per session at a time: a second start
//! is 409, never merged into the running one.

use shared::answer::Answer;
use shared::backfill::{self, BackfillJob};
use shared::command::{Command, CommandKind};
use shared::session::{Session, SessionStatus};
use shared::spin::Context;
use shared::{ApiError, ErrorCode, store};

/// Any organization's session: super_admins address sessions platform-wide.
async fn session(ctx: &Context, session_id: &str) -> Result<Session, ApiError> {
    let org = store::owner(&ctx.redis, session_id).await?.ok_or_else(ApiError::session_not_found)?;
    store::get(&ctx.redis, &org, session_id).await
}

fn already_running(job: &BackfillJob) -> ApiError {
    ApiError::new(ErrorCode::Conflict, "a backfill is already running for this session; poll it until it finishes")
        .with_detail("jobId", job.id.as_str())
}

pub async fn start(ctx: &Context, session_id: &str) -> Result<Answer, ApiError> {
    let session = session(ctx, session_id).await?;
    let org = &session.organization_id;
    if !session.is_paired() {
        return Err(ApiError::new(ErrorCode::NotImplemented, "this session has no WhatsApp number attached, so there is nothing to backfill")
            .with_detail("reason", "not_paired"));
    }
    // Settles a job whose gateway died, so it does not block this one.
    if let Some(job) = backfill::current(&ctx.redis, org, &session.id).await?.filter(|j| j.status == backfill::JobStatus::Running) {
        return Err(already_running(&job));
    }
    if session.status != SessionStatus::Working {
        return Err(ApiError::new(ErrorCode::Conflict, "the session is not connected to WhatsApp; start it and retry")
            .with_detail("reason", "not_connected")
            .with_detail("status", session.status.as_str()));
    }
    let command = Command::new(CommandKind::Backfill, &session.id, org);
    let job = BackfillJob::new(&command.id, org, &session.id, session.gateway_id.as_deref());
    if let Err(running) = backfill::start(&ctx.redis, &session, &job, &command).await? {
        return Err(already_running(&running));
    }
    Ok(Answer::accepted(&job))
}

pub async fn get(ctx: &Context, session_id: &str) -> Result<Answer, ApiError> {
    let session = session(ctx, session_id).await?;
    let job = backfill::current(&ctx.redis, &session.organization_id, &session.id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no backfill has run for this session").with_detail("reason", "no_backfill"))?;
    Ok(Answer::ok(&job))
}
