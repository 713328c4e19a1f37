//! Queued messages fail as `expired` on time whether or not a daemon runs their session (a
//! stopped session, one whose number is gone for days): every daemon sweeps the deployment's
//! outbox deadlines (`shared::outbox::sweep_expired`). Two daemons sweeping at once fail each
//! message once: a step only moves a message forward.

use crate::daemon::Daemon;
use shared::outbox;
use shared::time::now_millis;
use std::sync::Arc;
use std::time::Duration;

/// How often a daemon looks for sessions whose first queued message is due.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Sessions one look takes at most; the rest wait for the next.
const SESSIONS_PER_SWEEP: usize = 50;

pub async fn run(daemon: Arc<Daemon>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if daemon.is_stopping() {
            return;
        }
        match outbox::sweep_expired(&daemon.redis, now_millis(), SESSIONS_PER_SWEEP, daemon.config.retention()).await {
            Ok(0) => {}
            Ok(failed) => {
                tracing::info!(failed, "queued messages past their maximum age failed as expired");
                (0..failed).for_each(|_| crate::metrics::message("failed"));
            }
            Err(e) => tracing::warn!(error = %e, "sweeping the outboxes for expired messages failed; trying again"),
        }
    }
}
