//! `connector-daemon`: the only process that speaks WhatsApp. It keeps a heartbeat and a lease
//! per session, runs one supervisor task per session, takes commands from Redis Streams, and
//! writes state and events back to Redis. See ARCHITECTURE.md for how the parts meet.

mod adoption;
mod backfill;
mod backend;
mod commands;
mod config;
mod daemon;
mod egress;
mod expiry;
mod inbound;
mod lease;
mod limiter;
mod media;
mod metrics;
mod outbox;
mod receipts;
mod simulator;
mod slots;
mod supervisor;
mod unlinks;
mod webhooks;
mod whatsapp;

use clap::Parser;
use config::{BackendKind, Config};
use daemon::Daemon;
use daemon::persist;
use shared::command::{Command, CommandKind};
use shared::store;
use std::sync::Arc;
use std::time::Duration;
use supervisor::Order;
use tokio::sync::{oneshot, watch};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long SIGTERM waits for sessions to disconnect cleanly.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    shared::logging::init("info");
    if let Err(e) = run(Config::parse()).await {
        tracing::error!("connector-daemon: {e}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result {
    let connect = async || shared::redis::native::connect(&config.redis_url).await;
    let redis = connect().await?;
    let backend: Arc<dyn backend::Backend> = match config.backend {
        BackendKind::Simulator => {
            simulator::Simulator::start(config.clone(), redis.clone(), connect().await?).await
        }
        BackendKind::Whatsapp => Arc::new(whatsapp::WhatsApp::new(config.clone())?),
    };
    let daemon = Daemon::new(config.clone(), redis, backend);
    metrics::serve(&daemon)?;
    tracing::info!(gateway = %daemon.gateway_id, backend = ?config.backend, data = %config.data_dir.display(), "connector-daemon starting");
    lease::ensure_sole_process(&daemon).await?;
    lease::heartbeat(&daemon).await?;
    daemon.renewed();
    tokio::spawn(renew_leases(daemon.clone()));
    tokio::spawn(watch_leases(daemon.clone()));
    tokio::spawn(unlinks::retry(daemon.clone()));
    resume(&daemon).await;
    tokio::spawn(remove_deleted_stores(daemon.clone()));
    tokio::spawn(webhooks::run(daemon.clone()));
    tokio::spawn(expiry::run(daemon.clone()));
    let (stop_reading, stopping) = watch::channel(false);
    let reader = tokio::spawn(commands::run(daemon.clone(), connect().await?, stopping));
    let shutdown = shared::shutdown::signal_or_stdin_close(config.stop_on_stdin_close)?;
    println!("connector-daemon {} running", daemon.gateway_id);
    shutdown.await;

    // The heartbeat and the leases are left to lapse rather than released: a daemon of this
    // gateway back within the lease period resumes every session before anyone adopts them.
    tracing::info!("stopping: disconnecting sessions, leaving unfinished commands pending");
    daemon.begin_stopping();
    let _ = stop_reading.send(true);
    let _ = reader.await;
    let mut stopped = Vec::new();
    for (_, orders) in daemon.supervisors() {
        let (done, finished) = oneshot::channel();
        if orders.send(Order::Shutdown(done)).is_ok() {
            stopped.push(finished);
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        for finished in stopped {
            let _ = finished.await;
        }
    })
    .await;
    Ok(())
}

/// Runs again every session this gateway ran when it last stopped (or died), so a restart never
/// drops a paired number: each gets a `resume`, which runs it if its row says it runs. Retried
/// through Redis outages: a session is never skipped for a transient error.
async fn resume(daemon: &Arc<Daemon>) {
    let never = || false;
    let daemon_ref: &Daemon = daemon;
    let held = persist("read the sessions to resume", never, move || lease::held_sessions(daemon_ref, &daemon_ref.gateway_id)).await;
    for session_id in held.unwrap_or_default() {
        let id = session_id.as_str();
        let owner = persist("find a session's organization", never, move || store::owner(&daemon_ref.redis, id)).await;
        match owner.flatten() {
            Some(org) => daemon.command(Command::new(CommandKind::Resume, &session_id, &org), oneshot::channel().0),
            None => {
                discard_if_deleted(daemon, &session_id).await;
                persist("forget a deleted session", never, move || lease::forget(daemon_ref, id)).await;
            }
        }
    }
}

/// Unlinks and removes the store of a session deleted while this daemon was away. Only a
/// recorded deletion counts: a session merely missing (lost Redis data, another database) keeps
/// its store, since unlinking a device cannot be undone.
async fn discard_if_deleted(daemon: &Daemon, session_id: &str) {
    match persist("check a session's deletion", || false, move || store::was_deleted(&daemon.redis, session_id)).await {
        Some(true) => {
            tracing::info!(session = %session_id, "unlinking and removing the store of a deleted session");
            unlinks::discard(daemon, "", session_id, None).await;
        }
        _ => tracing::warn!(session = %session_id, "a store of a session Redis does not know, and no record of its deletion: kept"),
    }
}

/// Removes the stores of sessions deleted while no daemon that kept them was running.
async fn remove_deleted_stores(daemon: Arc<Daemon>) {
    let Ok(dirs) = std::fs::read_dir(daemon.config.data_dir.join("sessions")) else { return };
    for dir in dirs.flatten() {
        let session_id = dir.file_name().to_string_lossy().into_owned();
        let id = session_id.as_str();
        let owner = persist("find a session's organization", || false, || store::owner(&daemon.redis, id)).await;
        if owner.flatten().is_none() {
            discard_if_deleted(&daemon, &session_id).await;
        }
    }
}

/// Every third of a lease period: the heartbeat, then each lease. A lease another gateway took
/// (or whose row went) makes its supervisor let go at once. A lease that goes unrenewed is
/// [`watch_leases`]'s; once renewals succeed again, the sessions let go meanwhile are resumed.
async fn renew_leases(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(daemon.config.lease() / 3);
    loop {
        tick.tick().await;
        if daemon.is_stopping() {
            return;
        }
        match renew_all(&daemon).await {
            Ok(()) => {
                daemon.renewed();
                if daemon.take_suspended() {
                    tracing::info!("leases renewable again: resuming sessions");
                    resume(&daemon).await;
                }
            }
            Err(e) => tracing::warn!("cannot renew the heartbeat and leases: {e}"),
        }
    }
}

async fn renew_all(daemon: &Arc<Daemon>) -> std::result::Result<(), shared::redis::RedisError> {
    lease::heartbeat(daemon).await?;
    for (session_id, held) in daemon.held() {
        let sent = tokio::time::Instant::now();
        if lease::renew(daemon, &held.org, &session_id, held.fence).await? {
            daemon.extended(&session_id, held.fence, sent);
        } else {
            daemon.unhold(&session_id, held.fence);
            daemon.order(&session_id, &held.org, Order::LeaseLost(held.fence));
        }
    }
    Ok(())
}

/// Every twentieth of a lease period, the leases that went most of one without being extended
/// ([`Daemon::lease_safe`]): each session's client is stopped here, at once, whatever its supervisor or
/// the renewal loop waits on (a Redis that does not answer holds both), so no client runs on
/// after the lease lapsed in Redis and another gateway may take the session. The supervisors
/// let go when they can, and the sessions are resumed once renewals succeed again.
async fn watch_leases(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(daemon.config.lease() / 20);
    loop {
        tick.tick().await;
        if daemon.is_stopping() {
            return;
        }
        for (session_id, held) in daemon.take_lapsed() {
            tracing::warn!(session = %session_id, "the session's lease went unrenewed for a lease period; stopping its client");
            daemon.suspend();
            if let Some(client) = daemon.release_client(&session_id, Some(held.fence)) {
                tokio::spawn(async move { tokio::time::timeout(supervisor::DISCONNECT_DEADLINE, client.disconnect()).await });
            }
            daemon.order(&session_id, &held.org, Order::Suspend);
        }
    }
}

