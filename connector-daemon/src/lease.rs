//! Ownership in Redis: a heartbeat per gateway, a lease per session it runs, and the set of
//! sessions a gateway runs so that a restarted daemon resumes them. A lease whose holder stopped
//! renewing it (or whose gateway's heartbeat is gone) is claimable by any other daemon.

use crate::daemon::Daemon;
use shared::redis::{Redis, RedisError, first};
use shared::{args, keys};

/// Takes or renews the lease unless another gateway holds it; returns that holder.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return false";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '1' then redis.call('SREM', KEYS[2], ARGV[3]) end
return 0";

/// Takes the session's lease for this gateway, or renews it. `Some(holder)` when another live
/// gateway runs the session; a holder whose heartbeat has lapsed loses the lease to us.
pub async fn acquire(daemon: &Daemon, session_id: &str) -> Result<Option<String>, RedisError> {
    let Some(holder) = take_or_renew(daemon, session_id).await? else { return Ok(None) };
    if is_alive(daemon, &holder).await? {
        return Ok(Some(holder));
    }
    tracing::warn!(session_id, dead = %holder, "taking over the lease of a gateway without heartbeat");
    daemon.redis.execute("DEL", args![keys::session_lease(session_id)]).await?;
    take_or_renew(daemon, session_id).await
}

/// One run of [`ACQUIRE`]: `Some(holder)` when another gateway holds the lease.
async fn take_or_renew(daemon: &Daemon, session_id: &str) -> Result<Option<String>, RedisError> {
    let reply = first(&daemon.redis, "EVAL", args![
        ACQUIRE, 2, keys::session_lease(session_id), keys::gateway_sessions(&daemon.gateway_id),
        daemon.gateway_id.as_str(), daemon.config.lease_ms as i64, session_id,
    ])
    .await?;
    Ok(reply.into_string())
}

/// Renews every lease this gateway holds and its heartbeat. Returns the sessions whose lease
/// another gateway took meanwhile (this one must let go of them).
pub async fn renew_all(daemon: &Daemon) -> Result<Vec<String>, RedisError> {
    heartbeat(daemon).await?;
    let mut lost = Vec::new();
    for session_id in held_sessions(daemon).await? {
        if take_or_renew(daemon, &session_id).await?.is_some() {
            daemon.redis.execute("SREM", args![keys::gateway_sessions(&daemon.gateway_id), session_id.as_str()]).await?;
            lost.push(session_id);
        }
    }
    Ok(lost)
}

/// Gives the lease up. `forget` also drops the session from the gateway's resume set: a
/// stopped session is forgotten, a session paused by a shutdown is resumed on restart.
pub async fn release(daemon: &Daemon, session_id: &str, forget: bool) -> Result<(), RedisError> {
    daemon
        .redis
        .execute("EVAL", args![
            RELEASE, 2, keys::session_lease(session_id), keys::gateway_sessions(&daemon.gateway_id),
            daemon.gateway_id.as_str(), if forget { "1" } else { "0" }, session_id,
        ])
        .await
        .map(drop)
}

/// Marks this gateway alive for one lease period, and known to the others.
pub async fn heartbeat(daemon: &Daemon) -> Result<(), RedisError> {
    let alive = keys::gateway_alive(&daemon.gateway_id);
    daemon.redis.execute("SET", args![alive, std::process::id() as i64, "PX", daemon.config.lease_ms as i64]).await?;
    daemon.redis.execute("SADD", args![keys::gateways(), daemon.gateway_id.as_str()]).await.map(drop)
}

/// Whether a gateway has renewed its heartbeat within the last lease period.
pub async fn is_alive(daemon: &Daemon, gateway_id: &str) -> Result<bool, RedisError> {
    shared::store::gateway_is_alive(&daemon.redis, gateway_id).await
}

/// The sessions this gateway ran when it last stopped, to resume.
pub async fn held_sessions(daemon: &Daemon) -> Result<Vec<String>, RedisError> {
    let members = daemon.redis.execute("SMEMBERS", args![keys::gateway_sessions(&daemon.gateway_id)]).await?;
    Ok(members.into_iter().filter_map(|m| m.into_string()).collect())
}
