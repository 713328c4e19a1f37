//! When a gateway's heartbeat is gone, one live daemon adopts what it left behind: each session
//! it ran gets a `resume` on the placement stream (whichever daemon takes the session's lapsed
//! lease runs it again, if its row says it runs), then the commands still queued on its own
//! stream follow there, in their order and keeping their numbers. Its stream and resume set
//! are then deleted. A dead gateway that comes back later simply finds nothing left to resume.
//!
//! Every step is idempotent and a failure stops the adoption where it is: the guard lapses and a
//! later round (of this daemon or another) starts again, so nothing is skipped.

use crate::daemon::Daemon;
use crate::lease;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use shared::command::{Command, CommandKind};
use shared::redis::{Redis, first};
use shared::{args, keys, store};

const BATCH: usize = 100;

/// Deletes a dead gateway's stream (KEYS[1]) once it is empty, while its heartbeat (KEYS[2]) is
/// still gone.
const REMOVE_STREAM: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('XLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1";

fn failed(what: &str, e: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::IoError, "adoption", format!("{what}: {e}")))
}

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
        resume_sessions(daemon, &gateway).await?;
        forward_commands(daemon, reader, &gateway).await?;
        // Only while the gateway is still dead and nothing new landed on its stream meanwhile;
        // otherwise a later round finishes the adoption (or the gateway reads its stream itself).
        let removed = first(&daemon.redis, "EVAL", args![
            REMOVE_STREAM, 2, keys::gateway_commands(&gateway), keys::gateway_alive(&gateway),
        ])
        .await
        .map_err(|e| failed("remove its stream", e))?;
        if removed.as_int() == Some(1) {
            let _: () = reader.srem(keys::gateways(), &gateway).await?;
        }
    }
    Ok(())
}

/// Queues a `resume` for each session the dead gateway ran, then forgets its resume set.
async fn resume_sessions(daemon: &Daemon, gateway: &str) -> redis::RedisResult<()> {
    for session_id in lease::held_sessions(daemon, gateway).await.map_err(|e| failed("read its sessions", e))? {
        let owner = store::owner(&daemon.redis, &session_id).await.map_err(|e| failed("find a session's organization", e))?;
        // A session without an owner was deleted: nothing to resume.
        if let Some(org) = owner {
            let resume = Command::new(CommandKind::Resume, &session_id, &org);
            store::requeue(&daemon.redis, &resume).await.map_err(|e| failed("requeue a session", e))?;
        }
    }
    daemon.redis.execute("DEL", args![keys::gateway_sessions(gateway)]).await.map_err(|e| failed("forget its sessions", e))?;
    Ok(())
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
                store::requeue(&daemon.redis, &command).await.map_err(|e| failed("requeue a command", e))?;
            }
            crate::commands::acknowledge(daemon, &stream, &entry.id).await;
        }
    }
}
