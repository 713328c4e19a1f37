//! `connector-daemon`: the only process that speaks WhatsApp. It keeps a heartbeat and a lease
//! per session, runs one supervisor task per session, takes commands from Redis Streams, and
//! writes state and events back to Redis. See ARCHITECTURE.md for how the parts meet.

mod adoption;
mod backfill;
mod backend;
mod commands;
mod config;
mod daemon;
mod lease;
mod simulator;
mod supervisor;
mod whatsapp;

use clap::Parser;
use config::{BackendKind, Config};
use daemon::Daemon;
use shared::redis::{Redis, get_string};
use shared::{args, keys, store};
use std::sync::Arc;
use std::time::Duration;
use supervisor::Order;
use tokio::sync::{oneshot, watch};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long SIGTERM waits for sessions to disconnect cleanly.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
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
        BackendKind::Whatsapp => Arc::new(whatsapp::WhatsApp::new(config.clone())),
    };
    let daemon = Daemon::new(config.clone(), redis, backend);
    tracing::info!(gateway = %daemon.gateway_id, backend = ?config.backend, data = %config.data_dir.display(), "connector-daemon starting");
    lease::heartbeat(&daemon).await?;
    tokio::spawn(renew_leases(daemon.clone()));
    resume(&daemon).await?;
    let (stop_reading, stopping) = watch::channel(false);
    let reader = tokio::spawn(commands::run(daemon.clone(), connect().await?, stopping));
    println!("connector-daemon {} running", daemon.gateway_id);
    shutdown_signal(config.stop_on_stdin_close).await;

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
    daemon.redis.execute("DEL", args![keys::gateway_alive(&daemon.gateway_id)]).await?;
    Ok(())
}

/// Runs again every session this gateway ran when it last stopped (or died), so a restart never
/// drops a paired number. Sessions that were stopped meanwhile are forgotten.
async fn resume(daemon: &Arc<Daemon>) -> Result {
    for session_id in lease::held_sessions(daemon).await? {
        let org = get_string(&daemon.redis, &keys::session_owner(&session_id)).await?;
        let row = match &org {
            Some(org) => store::get(&daemon.redis, org, &session_id).await.ok(),
            None => None,
        };
        match (org, row) {
            (Some(org), Some(row)) if row.status.is_running() => {
                tracing::info!(session = %session_id, status = row.status.as_str(), "resuming");
                let _ = daemon.supervisor(&session_id, &org).send(Order::Resume);
            }
            _ => lease::release(daemon, &session_id, true).await?,
        }
    }
    Ok(())
}

async fn renew_leases(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(daemon.config.lease() / 3);
    loop {
        tick.tick().await;
        if daemon.is_stopping() {
            return;
        }
        match lease::renew_all(&daemon).await {
            Ok(lost) => {
                for session_id in lost {
                    if let Some((_, orders)) = daemon.supervisors().into_iter().find(|(id, _)| *id == session_id) {
                        let _ = orders.send(Order::LeaseLost);
                    }
                }
            }
            Err(e) => tracing::warn!("cannot renew the heartbeat and leases: {e}"),
        }
    }
}

async fn shutdown_signal(stop_on_stdin_close: bool) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let stdin_closed = async {
        if !stop_on_stdin_close {
            return std::future::pending().await;
        }
        let (closed, on_close) = oneshot::channel();
        // A plain thread: a blocked read must not hold up the runtime's shutdown.
        std::thread::spawn(move || {
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            let _ = closed.send(());
        });
        let _ = on_close.await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        _ = stdin_closed => {}
    }
}
