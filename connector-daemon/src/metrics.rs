//! The daemon's metrics in Prometheus's text format, served on `METRICS_LISTEN` (off unless
//! set): the sessions this daemon holds by status, their outbox depth, commands applied,
//! reconnects, messages sent or failed, webhook deliveries by outcome.
//!
//! Counters are counted where things happen; the session gauges are read from Redis every few
//! seconds (what the rows say is what the API shows).

use crate::daemon::Daemon;
use metrics::{counter, gauge};
use shared::session::SessionStatus;
use std::sync::Arc;
use std::time::Duration;

const STATUSES: [SessionStatus; 5] =
    [SessionStatus::Starting, SessionStatus::ScanQrCode, SessionStatus::Working, SessionStatus::Failed, SessionStatus::Stopped];

/// Starts serving `/metrics` when `METRICS_LISTEN` names an address.
pub fn serve(daemon: &Arc<Daemon>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Some(listen) = daemon.config.metrics_listen else { return Ok(()) };
    metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(listen).install()?;
    tokio::spawn(refresh_sessions(daemon.clone()));
    tracing::info!(%listen, "serving metrics");
    Ok(())
}

pub fn command(kind: &'static str) {
    counter!("daemon_commands_total", "kind" => kind).increment(1);
}

pub fn reconnect() {
    counter!("daemon_reconnects_total").increment(1);
}

/// A message left the outbox: `sent` or `failed`.
pub fn message(outcome: &'static str) {
    counter!("daemon_messages_total", "outcome" => outcome).increment(1);
}

/// A webhook attempt: `delivered` or `failed`.
pub fn delivery(outcome: &'static str) {
    counter!("daemon_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

async fn refresh_sessions(daemon: Arc<Daemon>) {
    loop {
        // A round Redis could not answer in full leaves the gauges as they were (stale, not 0).
        let round = async {
            let mut by_status = [0u64; STATUSES.len()];
            let mut outbox = 0u64;
            for (session_id, held) in daemon.held() {
                let session = shared::store::get(&daemon.redis, &held.org, &session_id).await?;
                if let Some(i) = STATUSES.iter().position(|s| *s == session.status) {
                    by_status[i] += 1;
                }
                outbox += shared::outbox::backlog(&daemon.redis, &held.org, &session_id).await?.depth;
            }
            Ok::<_, shared::ApiError>((by_status, outbox))
        };
        if let Ok((by_status, outbox)) = round.await {
            for (status, count) in STATUSES.iter().zip(by_status) {
                gauge!("daemon_sessions", "status" => status.as_str()).set(count as f64);
            }
            gauge!("daemon_outbox_depth").set(outbox as f64);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
