//! When a gateway's heartbeat is gone, one live daemon adopts what it left behind: the sessions
//! it ran are started again through the placement stream (whichever daemon takes a session's
//! lapsed lease runs it), then the commands still queued on its own stream follow them there,
//! in their order. A dead gateway that comes back later simply finds nothing left to resume.

use crate::daemon::Daemon;
use crate::lease;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use shared::command::{Command, CommandKind};
use shared::redis::{Redis, first, get_string};
use shared::{args, keys, store};

const BATCH: usize = 100;

/// Adopts every known gateway without a heartbeat that no other daemon is adopting.
pub async fn adopt_dead_gateways(daemon: &Daemon, reader: &mut ConnectionManager) -> redis::RedisResult<()> {
    let known: Vec<String> = reader.smembers(keys::gateways()).await?;
    for gateway in known {
        if gateway == daemon.gateway_id || lease::is_alive(daemon, &gateway).await.unwrap_or(true) {
            continue;
        }
        let claim = args![keys::gateway_adoption(&gateway), daemon.gateway_id.as_str(), "NX", "PX", daemon.config.lease_ms as i64];
        if first(&daemon.redis, "SET", claim).await.map(|r| r.into_string().is_none()).unwrap_or(true) {
            continue;
        }
        tracing::warn!(dead = %gateway, "adopting the sessions and commands of a gateway without heartbeat");
        restart_sessions(daemon, &gateway).await;
        forward_commands(daemon, reader, &gateway).await?;
        let _: () = reader.srem(keys::gateways(), &gateway).await?;
    }
    Ok(())
}

async fn restart_sessions(daemon: &Daemon, gateway: &str) {
    let held = daemon.redis.execute("SMEMBERS", args![keys::gateway_sessions(gateway)]).await.unwrap_or_default();
    for session_id in held.into_iter().filter_map(|m| m.into_string()) {
        let Ok(Some(org)) = get_string(&daemon.redis, &keys::session_owner(&session_id)).await else { continue };
        let running = store::get(&daemon.redis, &org, &session_id).await.is_ok_and(|row| row.status.is_running());
        if running {
            let resume = Command::new(CommandKind::Start, &session_id, &org);
            if let Err(e) = store::enqueue(&daemon.redis, None, &resume).await {
                tracing::warn!(session = %session_id, "cannot requeue an adopted session: {e}");
            }
        }
    }
    let _ = daemon.redis.execute("DEL", args![keys::gateway_sessions(gateway)]).await;
}

/// Moves the dead gateway's unfinished commands (read but unacknowledged, and never read) to
/// the placement stream, acknowledging each only once it is there.
async fn forward_commands(daemon: &Daemon, reader: &mut ConnectionManager, gateway: &str) -> redis::RedisResult<()> {
    let stream = keys::gateway_commands(gateway);
    crate::commands::create_groups(reader, std::slice::from_ref(&stream)).await?;
    loop {
        let claim = StreamAutoClaimOptions::default().count(BATCH);
        let claimed: StreamAutoClaimReply =
            reader.xautoclaim_options(&stream, keys::COMMAND_GROUP, &daemon.gateway_id, 0, "0-0", claim).await?;
        let unread: StreamReadReply = reader
            .xread_options(&[&stream], &[">"], &StreamReadOptions::default().group(keys::COMMAND_GROUP, &daemon.gateway_id).count(BATCH))
            .await?;
        let entries: Vec<StreamId> = claimed.claimed.into_iter().chain(unread.keys.into_iter().flat_map(|k| k.ids)).collect();
        if entries.is_empty() {
            return Ok(());
        }
        for entry in entries {
            if let Some(command) = crate::commands::command_of(&entry) {
                store::enqueue(&daemon.redis, None, &command).await.map_err(|e| redis::RedisError::from((redis::ErrorKind::IoError, "requeue", e.to_string())))?;
            }
            let _: i64 = reader.xack(&stream, keys::COMMAND_GROUP, &[&entry.id]).await?;
        }
    }
}
