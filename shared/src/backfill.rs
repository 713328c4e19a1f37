//! Backfill jobs: a super_admin re-pulls what WhatsApp exposes for a session by direct fetch
//! (the contacts the daemon keeps, the joined groups with their members). One job per session
//! runs at a time; the latest job, running or finished, is the session's `backfill` document.

use crate::event::{Event, EventType};
use crate::event_log::Retention;
use crate::redis::{Redis, first};
use crate::command::Command;
use crate::session::Session;
use crate::store::{self, decode};
use crate::time::now_millis;
use crate::{ApiError, args, keys};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Completed,
    Failed,
}

/// How far one kind has come: `total` is known once its fetch answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillJob {
    pub id: String,
    pub session_id: String,
    pub organization_id: String,
    /// The gateway asked to run it: a job whose gateway died is reported failed.
    pub gateway_id: Option<String>,
    pub status: JobStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub contacts: Progress,
    pub groups: Progress,
    pub error: Option<String>,
}

impl BackfillJob {
    pub fn new(id: &str, org: &str, session_id: &str, gateway_id: Option<&str>) -> BackfillJob {
        BackfillJob {
            id: id.to_owned(),
            session_id: session_id.to_owned(),
            organization_id: org.to_owned(),
            gateway_id: gateway_id.map(str::to_owned),
            status: JobStatus::Running,
            started_at: now_millis(),
            finished_at: None,
            contacts: Progress::default(),
            groups: Progress::default(),
            error: None,
        }
    }

    pub fn finish(&mut self, outcome: Result<(), String>) {
        self.finished_at = Some(now_millis());
        match outcome {
            Ok(()) => self.status = JobStatus::Completed,
            Err(error) => {
                self.status = JobStatus::Failed;
                self.error = Some(error);
            }
        }
    }

    /// The event announcing the job as it stands: progress while it runs, then its outcome.
    pub fn event(&self) -> Event {
        let kind = match self.status {
            JobStatus::Running => EventType::BackfillProgress,
            JobStatus::Completed => EventType::BackfillCompleted,
            JobStatus::Failed => EventType::BackfillFailed,
        };
        let data = serde_json::to_value(self).unwrap_or_default();
        Event::new(kind, &self.organization_id, &self.session_id, data)
    }
}

/// Starts `job` and queues its command for the session, in one step; `Err` carries the job
/// already running for the session.
pub async fn start<R: Redis>(r: &R, session: &Session, job: &BackfillJob, command: &Command) -> Result<Result<(), BackfillJob>, ApiError> {
    let key = keys::session_backfill(&job.organization_id, &job.session_id);
    match store::start_job(r, session, &key, job, command).await? {
        Ok(()) => Ok(Ok(())),
        Err(running) => serde_json::from_value(running).map(Err).map_err(|e| ApiError::internal(format!("stored data is unreadable: {e}"))),
    }
}

/// The session's latest job. A job still `running` on a gateway that is gone is settled as
/// failed here, so it neither reports progress that will never come nor blocks the next one.
pub async fn current<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Option<BackfillJob>, ApiError> {
    let key = keys::session_backfill(org, session_id);
    let Some(mut job) = decode::<BackfillJob>(first(r, "GET", args![&key]).await?)? else { return Ok(None) };
    if job.status == JobStatus::Running {
        let alive = match &job.gateway_id {
            Some(gateway) => store::gateway_is_alive(r, gateway).await?,
            None => true,
        };
        if !alive {
            job.finish(Err("the gateway running this backfill stopped".to_owned()));
            // Written only while the session exists: a read must not recreate a deleted one's job.
            store::put_logged(r, org, session_id, &key, &job, &[], Retention::default()).await?;
        }
    }
    Ok(Some(job))
}

/// Writes the job as it stands and logs its event, atomically.
pub async fn record<R: Redis>(r: &R, job: &BackfillJob, retention: Retention) -> Result<(), ApiError> {
    let key = keys::session_backfill(&job.organization_id, &job.session_id);
    store::put_logged(r, &job.organization_id, &job.session_id, &key, job, &[job.event()], retention).await
}
