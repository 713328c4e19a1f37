//! Unlinking a device on WhatsApp's side when no client of the session runs (`:logout` of a
//! stopped, failed or reconnecting session; a delete): the daemon connects with the stored
//! device just long enough to send the unlink, then wipes the store.
//!
//! When WhatsApp cannot be reached, the store is set aside under `unlinks/` in the data
//! directory: the session is unpaired for the API at once (and pairs from scratch if started
//! again), and the unlink is retried until it is sent, then announced as `session.unlinked`.
//! A wipe alone would leave the device linked to the phone, invisible to its owner's gateway.

use crate::backend::{BackendEvent, Events};
use crate::daemon::Daemon;
use crate::inbound;
use serde::{Deserialize, Serialize};
use shared::event::{Event, EventType};
use shared::redis::{Redis, first};
use shared::{args, keys, store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long an unlink may take, from connecting to WhatsApp's answer.
const UNLINK_DEADLINE: Duration = Duration::from_secs(30);
const PENDING_FILE: &str = "pending-unlink.json";

/// What a set-aside store is waiting for, kept beside it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    organization_id: String,
    session_id: String,
    wa_jid: Option<String>,
    phone_number: Option<String>,
    since: i64,
}

/// Connects with the device stored in `store` and unlinks it. `Ok` when WhatsApp took the
/// unlink, or when the store holds no linked device (nothing to unlink).
async fn unlink(daemon: &Daemon, session_id: &str, store: &Path) -> Result<(), String> {
    if !store.exists() {
        return Ok(());
    }
    let (events, mut inbox) = mpsc::unbounded_channel();
    let client = daemon.backend.connect(session_id, store, Events::to(events), Arc::new(inbound::Refuse)).await?;
    let outcome = tokio::time::timeout(UNLINK_DEADLINE, async {
        while let Some(event) = inbox.recv().await {
            match event {
                BackendEvent::Connected(_) => return client.logout().await,
                // No device, or one already unlinked: nothing is linked any more.
                BackendEvent::Qr { .. } | BackendEvent::QrExhausted { .. } | BackendEvent::LoggedOut { .. } => return Ok(()),
                BackendEvent::Disconnected { reason, .. } => return Err(reason),
                BackendEvent::StreamReplaced => return Err("another client took the device's stream".to_owned()),
                BackendEvent::Refused { reason } => return Err(reason),
                BackendEvent::TemporaryBan { reason, .. } => return Err(format!("temporarily banned: {reason}")),
                BackendEvent::Paired(_)
                | BackendEvent::PairingFailed { .. }
                | BackendEvent::ProfileName(_)
                | BackendEvent::Contacts(_)
                | BackendEvent::ServerAck { .. }
                | BackendEvent::Receipt { .. }
                | BackendEvent::Undeliverable { .. } => {}
            }
        }
        Err("the connection ended".to_owned())
    });
    let outcome = outcome.await.unwrap_or_else(|_| Err("WhatsApp did not answer in time".to_owned()));
    client.disconnect().await;
    outcome
}

/// What became of a session's store: `true` when its device is unlinked (or none was linked)
/// and the store is gone; `false` when it waits, set aside, for the unlink to be retried.
pub async fn settle(daemon: &Daemon, org: &str, session_id: &str, identity: Option<(&str, Option<&str>)>, unlinked: Result<(), String>) -> bool {
    let store = daemon.config.session_dir(session_id);
    match unlinked {
        Ok(()) => {
            if let Err(e) = daemon.config.remove_session_dir(session_id) {
                tracing::warn!(session = session_id, "cannot remove the session's store: {e}");
            }
            true
        }
        Err(reason) if store.exists() => {
            tracing::warn!(session = session_id, "cannot unlink the device now ({reason}); retrying later");
            let pending = Pending {
                organization_id: org.to_owned(),
                session_id: session_id.to_owned(),
                wa_jid: identity.map(|(jid, _)| jid.to_owned()),
                phone_number: identity.and_then(|(_, phone)| phone.map(str::to_owned)),
                since: shared::time::now_millis(),
            };
            if let Err(e) = set_aside(daemon, &store, &pending) {
                tracing::error!(session = session_id, "cannot set the store aside for a later unlink, wiping it: {e}");
                let _ = daemon.config.remove_session_dir(session_id);
            }
            false
        }
        Err(_) => true,
    }
}

/// Unlinks the device a session's store holds (when no client of it runs), then wipes or sets
/// the store aside as [`settle`] does.
pub async fn discard(daemon: &Daemon, org: &str, session_id: &str, identity: Option<(&str, Option<&str>)>) -> bool {
    let unlinked = unlink(daemon, session_id, &daemon.config.session_dir(session_id)).await;
    settle(daemon, org, session_id, identity, unlinked).await
}

fn unlinks_dir(daemon: &Daemon) -> PathBuf {
    daemon.config.data_dir.join("unlinks")
}

fn set_aside(daemon: &Daemon, store: &Path, pending: &Pending) -> Result<(), String> {
    let aside = unlinks_dir(daemon).join(format!("{}-{}", pending.session_id, ulid::Ulid::new()));
    std::fs::create_dir_all(unlinks_dir(daemon)).map_err(|e| e.to_string())?;
    std::fs::rename(store, &aside).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(pending).map_err(|e| e.to_string())?;
    std::fs::write(aside.join(PENDING_FILE), json).map_err(|e| e.to_string())
}

/// Retries every set-aside unlink each `unlink_retry_ms` until it is sent, while the daemon runs.
pub async fn retry(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(daemon.config.unlink_retry());
    loop {
        tick.tick().await;
        if daemon.is_stopping() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(unlinks_dir(&daemon)) else { continue };
        for entry in entries.flatten() {
            retry_one(&daemon, &entry.path()).await;
        }
    }
}

async fn retry_one(daemon: &Daemon, aside: &Path) {
    let Some(pending) = std::fs::read(aside.join(PENDING_FILE)).ok().and_then(|json| serde_json::from_slice::<Pending>(&json).ok()) else {
        return;
    };
    // Daemons sharing the data directory take turns: one claim per attempt.
    let name = aside.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let hold = (UNLINK_DEADLINE + Duration::from_secs(5)).as_millis() as i64;
    let claim = args![keys::unlink_claim(&name), daemon.gateway_id.as_str(), "NX", "PX", hold];
    if first(&daemon.redis, "SET", claim).await.ok().and_then(|reply| reply.into_string()).is_none() {
        return;
    }
    match unlink(daemon, &pending.session_id, aside).await {
        Ok(()) => {
            tracing::info!(session = %pending.session_id, "unlinked a device a logout had to leave linked");
            let _ = std::fs::remove_dir_all(aside);
            let data = serde_json::json!({
                "waJid": pending.wa_jid, "phoneNumber": pending.phone_number, "pendingSince": pending.since,
            });
            let event = Event::new(EventType::SessionUnlinked, &pending.organization_id, &pending.session_id, data);
            let announced = store::announce(&daemon.redis, &pending.organization_id, &pending.session_id, &[event], daemon.config.retention()).await;
            if let Err(e) = announced {
                tracing::warn!(session = %pending.session_id, "cannot announce the unlink: {e:?}");
            }
        }
        Err(reason) => tracing::info!(session = %pending.session_id, "the device is still not unlinked: {reason}"),
    }
    let _ = daemon.redis.execute("DEL", args![keys::unlink_claim(&name)]).await;
}
