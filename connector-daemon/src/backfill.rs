//! A backfill job on the daemon's side: re-pull what WhatsApp exposes by direct fetch for one
//! session, storing results and announcing progress as it goes.
//!
//! Contacts are the ones this daemon keeps from contact and push-name updates (WhatsApp has no
//! call that lists them). Groups are fetched with their members and stored in batches, each
//! batch announced as `backfill.progress`; groups the number has left are dropped at the end.

use crate::backend::Client;
use crate::daemon::Daemon;
use shared::backfill::{self, BackfillJob, JobStatus, Progress};
use shared::directory::{self, Kind};
use std::sync::Arc;

/// Groups stored (and announced) per step.
const GROUP_BATCH: usize = 10;

pub async fn run(daemon: Arc<Daemon>, client: Arc<dyn Client>, mut job: BackfillJob) {
    let outcome = pull(&daemon, client.as_ref(), &mut job).await;
    finish(&daemon, job, outcome).await;
}

async fn pull(daemon: &Daemon, client: &dyn Client, job: &mut BackfillJob) -> Result<(), String> {
    let (org, session) = (job.organization_id.clone(), job.session_id.clone());
    let redis = &daemon.redis;
    let contacts = directory::count(redis, &org, &session, Kind::Contacts).await.map_err(|e| e.message)?;
    job.contacts = Progress { done: contacts, total: Some(contacts) };
    record(daemon, job).await;

    let groups = client.groups().await.map_err(|e| format!("cannot fetch the joined groups: {e}"))?;
    job.groups.total = Some(groups.len() as u64);
    for batch in groups.chunks(GROUP_BATCH) {
        directory::put_groups(redis, &org, &session, batch).await.map_err(|e| e.message)?;
        job.groups.done += batch.len() as u64;
        record(daemon, job).await;
    }
    let joined: Vec<String> = groups.into_iter().map(|g| g.jid).collect();
    directory::retain_groups(redis, &org, &session, &joined).await.map_err(|e| e.message)?;
    Ok(())
}

/// Ends the job with its outcome, written and announced.
pub async fn finish(daemon: &Daemon, mut job: BackfillJob, outcome: Result<(), String>) {
    job.finish(outcome);
    tracing::info!(session = %job.session_id, job = %job.id, status = ?job.status, "backfill finished");
    record(daemon, &job).await;
}

/// Fails the session's running job, if any: its connection ended under it.
pub async fn interrupt(daemon: &Daemon, org: &str, session_id: &str, reason: &str) {
    if let Ok(Some(job)) = backfill::current(&daemon.redis, org, session_id).await {
        if job.status == JobStatus::Running {
            finish(daemon, job, Err(reason.to_owned())).await;
        }
    }
}

async fn record(daemon: &Daemon, job: &BackfillJob) {
    if let Err(e) = backfill::record(&daemon.redis, job, daemon.config.retention()).await {
        tracing::warn!(session = %job.session_id, job = %job.id, "cannot record the backfill's progress: {e:?}");
    }
}
