//! Commands in. The daemon reads two streams with one consumer group: the placement stream any
//! daemon may take from, and its own gateway's stream. A command is acknowledged only after its
//! session's supervisor says it took effect, so a daemon that dies mid-command leaves it pending:
//! it re-reads its own pending entries when it starts again, and a live daemon claims the
//! placement entries of a consumer whose heartbeat is gone (and adopts a dead gateway's own
//! stream, see `adoption`).

use crate::daemon::Daemon;
use crate::lease;
use crate::supervisor::Order;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadOptions, StreamReadReply};
use shared::command::{Command, CommandResult};
use shared::keys;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

const READ_BLOCK_MS: usize = 1_000;
const READ_BATCH: usize = 64;

/// Reads and dispatches commands until `stopping` turns true.
pub async fn run(daemon: Arc<Daemon>, mut reader: ConnectionManager, mut stopping: watch::Receiver<bool>) {
    let streams = [keys::unplaced_commands(), keys::gateway_commands(&daemon.gateway_id)];
    while let Err(e) = create_groups(&mut reader, &streams).await {
        tracing::warn!("cannot create the command consumer groups, retrying: {e}");
        if sleep_or_stop(&mut stopping, Duration::from_secs(1)).await {
            return;
        }
    }
    // What this gateway had read but not finished before it last stopped comes first.
    let mut pending_first = true;
    let mut last_orphan_check = tokio::time::Instant::now() - daemon.config.lease();
    while !*stopping.borrow() {
        if last_orphan_check.elapsed() >= daemon.config.lease() / 3 {
            last_orphan_check = tokio::time::Instant::now();
            if let Err(e) = crate::adoption::adopt_dead_gateways(&daemon, &mut reader).await {
                tracing::warn!("cannot adopt a dead gateway's work: {e}");
            }
            match claim_orphans(&daemon, &mut reader, &streams[0]).await {
                Ok(entries) => entries.into_iter().for_each(|entry| dispatch(&daemon, &streams[0], entry)),
                Err(e) => tracing::warn!("cannot claim orphaned commands: {e}"),
            }
        }
        let start = if pending_first { "0" } else { ">" };
        let mut options = StreamReadOptions::default().group(keys::COMMAND_GROUP, &daemon.gateway_id).count(READ_BATCH);
        if !pending_first {
            options = options.block(READ_BLOCK_MS);
        }
        let read: Result<StreamReadReply, _> = reader.xread_options(&streams, &[start, start], &options).await;
        match read {
            Ok(reply) => {
                pending_first = false;
                for stream in reply.keys {
                    for entry in stream.ids {
                        dispatch(&daemon, &stream.key, entry);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot read commands, retrying: {e}");
                if e.to_string().contains("NOGROUP") {
                    let _ = create_groups(&mut reader, &streams).await;
                }
                if sleep_or_stop(&mut stopping, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    }
}

async fn sleep_or_stop(stopping: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    let _ = tokio::time::timeout(pause, stopping.changed()).await;
    *stopping.borrow()
}

/// Creates the group at the start of each stream, so commands queued before any daemon ever
/// ran are carried out too.
pub async fn create_groups(reader: &mut ConnectionManager, streams: &[String]) -> redis::RedisResult<()> {
    for stream in streams {
        let created: redis::RedisResult<()> = reader.xgroup_create_mkstream(stream, keys::COMMAND_GROUP, "0").await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            other => other?,
        }
    }
    Ok(())
}

/// Placement commands delivered to a daemon that has since died (its heartbeat lapsed).
async fn claim_orphans(daemon: &Daemon, reader: &mut ConnectionManager, stream: &str) -> redis::RedisResult<Vec<StreamId>> {
    let pending: StreamPendingCountReply = reader.xpending_count(stream, keys::COMMAND_GROUP, "-", "+", 100).await?;
    let mut orphans = Vec::new();
    for entry in pending.ids {
        if entry.consumer != daemon.gateway_id && !lease::is_alive(daemon, &entry.consumer).await.unwrap_or(true) {
            orphans.push(entry.id);
        }
    }
    if orphans.is_empty() {
        return Ok(Vec::new());
    }
    tracing::info!(count = orphans.len(), "claiming commands of a gateway without heartbeat");
    let claimed: StreamClaimReply = reader.xclaim(stream, keys::COMMAND_GROUP, &daemon.gateway_id, 0, &orphans).await?;
    Ok(claimed.ids)
}

/// The command a stream entry carries; `None` for an entry this build does not know.
pub fn command_of(entry: &StreamId) -> Option<Command> {
    let fields: Vec<(String, String)> = entry
        .map
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), redis::from_redis_value::<String>(v).ok()?)))
        .collect();
    Command::from_fields(&fields)
}

/// Hands one entry to its session's supervisor and acknowledges it once the supervisor answers.
fn dispatch(daemon: &Arc<Daemon>, stream: &str, entry: StreamId) {
    let (daemon, stream) = (daemon.clone(), stream.to_owned());
    let Some(command) = command_of(&entry) else {
        tracing::warn!(id = %entry.id, "dropping an entry that is not a command this build knows");
        tokio::spawn(async move { acknowledge(&daemon, &stream, &entry.id).await });
        return;
    };
    let (reply, answer) = oneshot::channel();
    let orders = daemon.supervisor(&command.session_id, &command.organization_id);
    if let Err(refused) = orders.send(Order::Command(command.clone(), reply)) {
        // The supervisor ended between lookup and send (a delete); a fresh one takes the order.
        let _ = daemon.supervisor(&command.session_id, &command.organization_id).send(refused.0);
    }
    tokio::spawn(async move {
        let result = match answer.await {
            Ok(result) => result,
            // Dropped unanswered: the daemon is stopping. Leave it pending for the next start.
            Err(_) if daemon.is_stopping() => return,
            Err(_) => Some(CommandResult::failed("backend", "the session stopped before the command took effect")),
        };
        if let Some(result) = result {
            daemon.publish_result(&command.organization_id, &command.id, &result).await;
        }
        acknowledge(&daemon, &stream, &entry.id).await;
    });
}

async fn acknowledge(daemon: &Daemon, stream: &str, entry_id: &str) {
    let mut redis = daemon.redis.clone();
    let acked: redis::RedisResult<i64> = redis.xack(stream, keys::COMMAND_GROUP, &[entry_id]).await;
    if let Err(e) = acked {
        tracing::warn!(entry_id, "cannot acknowledge a command: {e}");
    }
}
