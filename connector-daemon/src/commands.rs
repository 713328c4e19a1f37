//! Commands in. The daemon reads two streams with one consumer group: the placement stream any
//! daemon may take from, and its own gateway's stream. A command is acknowledged only after its
//! session's supervisor says it took effect, so a daemon that dies mid-command leaves it pending:
//! it re-reads all its own pending entries when it starts again, and a live daemon claims the
//! placement entries of a consumer whose heartbeat is gone (and adopts a dead gateway's own
//! stream, see `adoption`). After a failed read it re-reads its own pending entries too: a read
//! whose reply a Redis restart swallowed left them pending on it all the same.
//!
//! Streams stay bounded: an entry is deleted when it is acknowledged, and a dead consumer is
//! removed once nothing is pending on it. Claims name a minimum idle time of one lease period,
//! so of two daemons claiming the same entry only the first gets it.

use crate::daemon::Daemon;
use crate::lease;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamClaimReply, StreamId, StreamInfoConsumersReply, StreamPendingCountReply, StreamReadOptions, StreamReadReply};
use shared::command::{Command, CommandResult, ENTRY_FIELD};
use shared::keys;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

const READ_BLOCK_MS: usize = 1_000;
const READ_BATCH: usize = 64;

/// Acknowledges an entry and deletes it: a done command leaves nothing behind.
const ACK_DELETE: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])";

/// Reads and dispatches commands until `stopping` turns true.
pub async fn run(daemon: Arc<Daemon>, mut reader: ConnectionManager, mut stopping: watch::Receiver<bool>) {
    let streams = [keys::unplaced_commands(), keys::gateway_commands(&daemon.gateway_id)];
    while let Err(e) = create_groups(&mut reader, &streams).await {
        tracing::warn!("cannot create the command consumer groups, retrying: {e}");
        if sleep_or_stop(&mut stopping, Duration::from_secs(1)).await {
            return;
        }
    }
    // What this gateway had read but not finished before it last stopped comes first, all of it.
    for stream in &streams {
        while let Err(e) = redeliver_own(&daemon, &mut reader, stream).await {
            tracing::warn!("cannot read this gateway's pending commands, retrying: {e}");
            if sleep_or_stop(&mut stopping, Duration::from_secs(1)).await {
                return;
            }
        }
    }
    let mut last_orphan_check = tokio::time::Instant::now() - daemon.config.lease();
    let mut reread = false;
    while !*stopping.borrow() {
        if last_orphan_check.elapsed() >= daemon.config.lease() / 3 {
            last_orphan_check = tokio::time::Instant::now();
            if let Err(e) = crate::adoption::adopt_dead_gateways(&daemon, &mut reader).await {
                tracing::warn!("cannot adopt a dead gateway's work: {e}");
            }
            if let Err(e) = claim_orphans(&daemon, &mut reader, &streams[0]).await {
                tracing::warn!("cannot claim orphaned commands: {e}");
                reread = true;
            }
        }
        if reread {
            // A read or claim that failed may have been carried out by Redis with its reply
            // lost (the connection dropped as it answered): its entries are pending on this
            // gateway, which never saw them.
            reread = false;
            for stream in &streams {
                if let Err(e) = redeliver_own(&daemon, &mut reader, stream).await {
                    tracing::warn!("cannot re-read this gateway's pending commands: {e}");
                    reread = true;
                }
            }
        }
        let options = StreamReadOptions::default().group(keys::COMMAND_GROUP, &daemon.gateway_id).count(READ_BATCH).block(READ_BLOCK_MS);
        let read: Result<StreamReadReply, _> = reader.xread_options(&streams, &[">", ">"], &options).await;
        match read {
            Ok(reply) => {
                for stream in reply.keys {
                    for entry in stream.ids {
                        dispatch(&daemon, &stream.key, entry);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot read commands, retrying: {e}");
                reread = true;
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

/// Dispatches again every entry of `stream` this gateway read and did not finish, page by page
/// (those still being carried out are skipped by `dispatch`).
async fn redeliver_own(daemon: &Arc<Daemon>, reader: &mut ConnectionManager, stream: &str) -> redis::RedisResult<()> {
    let mut after = "0".to_owned();
    loop {
        let options = StreamReadOptions::default().group(keys::COMMAND_GROUP, &daemon.gateway_id).count(READ_BATCH);
        let reply: StreamReadReply = reader.xread_options(&[stream], &[&after], &options).await?;
        let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        let Some(last) = entries.last() else { return Ok(()) };
        after = last.id.clone();
        entries.into_iter().for_each(|entry| dispatch(daemon, stream, entry));
    }
}

/// Creates the group at the start of each stream, so commands queued before any daemon ever
/// ran are carried out too. Done commands are deleted from the streams, so a group created
/// again (after it went missing) finds only commands nobody finished; and one that was carried
/// out already is older than the session's last applied command, which supervisors skip.
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

/// Takes over the placement commands left pending on consumers whose heartbeat is gone, every
/// page of them, and removes such consumers once nothing is pending on them.
async fn claim_orphans(daemon: &Arc<Daemon>, reader: &mut ConnectionManager, stream: &str) -> redis::RedisResult<()> {
    let consumers: StreamInfoConsumersReply = reader.xinfo_consumers(stream, keys::COMMAND_GROUP).await?;
    let min_idle = daemon.config.lease_ms as usize;
    for consumer in consumers.consumers {
        if consumer.name == daemon.gateway_id || lease::is_alive(daemon, &consumer.name).await.unwrap_or(true) {
            continue;
        }
        let mut after = "-".to_owned();
        loop {
            let pending: StreamPendingCountReply =
                reader.xpending_consumer_count(stream, keys::COMMAND_GROUP, &after, "+", 100, &consumer.name).await?;
            let Some(last) = pending.ids.last() else { break };
            after = format!("({}", last.id);
            let ids: Vec<&str> = pending.ids.iter().map(|p| p.id.as_str()).collect();
            let claimed: StreamClaimReply = reader.xclaim(stream, keys::COMMAND_GROUP, &daemon.gateway_id, min_idle, &ids).await?;
            if !claimed.ids.is_empty() {
                tracing::info!(dead = %consumer.name, count = claimed.ids.len(), "claiming commands of a gateway without heartbeat");
            }
            claimed.ids.into_iter().for_each(|entry| dispatch(daemon, stream, entry));
        }
        let left: StreamPendingCountReply =
            reader.xpending_consumer_count(stream, keys::COMMAND_GROUP, "-", "+", 1, &consumer.name).await?;
        if left.ids.is_empty() {
            let _: i64 = reader.xgroup_delconsumer(stream, keys::COMMAND_GROUP, &consumer.name).await?;
        }
    }
    Ok(())
}

/// The command a stream entry carries; `None` for an entry this build does not know.
pub fn command_of(entry: &StreamId) -> Option<Command> {
    Command::from_json(&entry.get::<String>(ENTRY_FIELD)?)
}

/// Hands one entry to its session's supervisor; acknowledges and deletes it once the supervisor
/// answers.
fn dispatch(daemon: &Arc<Daemon>, stream: &str, entry: StreamId) {
    let in_flight = format!("{stream} {}", entry.id);
    if !daemon.begin_entry(&in_flight) {
        return;
    }
    let (daemon, stream) = (daemon.clone(), stream.to_owned());
    let Some(command) = command_of(&entry) else {
        tracing::warn!(id = %entry.id, "dropping an entry that is not a command this build knows");
        tokio::spawn(async move {
            acknowledge(&daemon, &stream, &entry.id).await;
            daemon.end_entry(&in_flight);
        });
        return;
    };
    crate::metrics::command(command.kind.as_str());
    let (reply, answer) = oneshot::channel();
    daemon.command(command.clone(), reply);
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
        daemon.end_entry(&in_flight);
    });
}

/// Acknowledges and deletes an entry, retrying through a Redis outage (an entry left pending
/// would be carried out again, skipped by then as older than the last applied command).
pub async fn acknowledge(daemon: &Daemon, stream: &str, entry_id: &str) {
    let acked = crate::daemon::persist("acknowledge a command", || daemon.is_stopping(), move || async move {
        shared::redis::Redis::execute(&daemon.redis, "EVAL", shared::args![ACK_DELETE, 1, stream, keys::COMMAND_GROUP, entry_id]).await
    });
    acked.await;
}
