//! Ownership in Redis: a heartbeat per gateway, a lease per session it runs, and the set of
//! sessions a gateway runs so that a restarted daemon resumes them.
//!
//! A lease is `<gatewayId> <fence>` under the session's key, in the row's slot. Taking it is a
//! compare-and-set script that also numbers it: the fencing token is the row's `_fence` plus
//! one, written to the row in the same step. Every row write of the daemon carries its token
//! and the row refuses any other (`store::update`), so a daemon that lost a session can no
//! longer change what the API reports about it. Renewing and releasing are compare-and-set too:
//! they touch the lease only while it is still this gateway's, with this token.

use crate::daemon::Daemon;
use shared::redis::{Redis, RedisError, Reply, first};
use shared::{args, keys};

/// Takes the lease (KEYS[1]) of the session whose row is KEYS[2] for gateway ARGV[1], for
/// ARGV[2] ms. Returns the fencing token; the lease a gateway already holds keeps its token (a
/// daemon restarted within the lease period). `busy <gateway>` when another gateway holds it,
/// nothing when the row is gone.
const ACQUIRE: &str = r"
local raw = redis.call('GET', KEYS[2])
if not raw then return false end
local held = redis.call('GET', KEYS[1])
if held then
  local gateway, fence = string.match(held, '^(%S+) (%d+)$')
  if gateway ~= ARGV[1] then return 'busy ' .. (gateway or '?') end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(fence)
end
local row = cjson.decode(raw)
local fence = (tonumber(row['_fence']) or 0) + 1
row['_fence'] = fence
row['gatewayId'] = ARGV[1]
row['updatedAt'] = tonumber(ARGV[3])
redis.call('SET', KEYS[2], cjson.encode(row))
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. fence, 'PX', ARGV[2])
return fence";

/// Extends the lease while it is still `ARGV[1]` (gateway and token). A lease that lapsed (a
/// slow renewal) is taken back when nobody acquired the session since and it was not released:
/// the row still carries the token and names this gateway (ARGV[4]). 0 when the session is lost.
const RENEW: &str = r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if held then return 0 end
local raw = redis.call('GET', KEYS[2])
if not raw then return 0 end
local row = cjson.decode(raw)
if tonumber(row['_fence']) ~= tonumber(ARGV[2]) or row['gatewayId'] ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1";

/// Gives the lease up while it is still `ARGV[1]`; the row then names no gateway, unless a
/// newer lease was taken meanwhile.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local raw = redis.call('GET', KEYS[2])
if not raw then return 0 end
local row = cjson.decode(raw)
if tonumber(row['_fence']) ~= tonumber(ARGV[2]) or row['gatewayId'] == cjson.null then return 0 end
row['gatewayId'] = cjson.null
row['updatedAt'] = tonumber(ARGV[3])
redis.call('SET', KEYS[2], cjson.encode(row))
return 1";

/// What taking a session's lease came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquired {
    /// This gateway holds the session, with this fencing token.
    Fence(i64),
    /// Another gateway holds it.
    Busy(String),
    /// The session's row is gone (deleted).
    Gone,
}

/// The lease's value while this gateway holds it with token `fence`: what every fenced write compares.
pub fn value(daemon: &Daemon, fence: i64) -> String {
    format!("{} {fence}", daemon.gateway_id)
}

/// Takes the session's lease for this gateway, or finds who holds it. A taken lease joins the
/// gateway's resume set.
pub async fn acquire(daemon: &Daemon, org: &str, session_id: &str) -> Result<Acquired, RedisError> {
    let reply = first(&daemon.redis, "EVAL", args![
        ACQUIRE, 2, keys::session_lease(org, session_id), keys::session(org, session_id),
        daemon.gateway_id.as_str(), daemon.config.lease_ms as i64, shared::time::now_millis(),
    ])
    .await?;
    let acquired = match reply {
        Reply::Nil => Acquired::Gone,
        Reply::Int(fence) => Acquired::Fence(fence),
        other => match other.into_string().as_deref().and_then(|s| s.strip_prefix("busy ")) {
            Some(holder) => Acquired::Busy(holder.to_owned()),
            None => return Err(RedisError("unexpected lease reply".into())),
        },
    };
    if let Acquired::Fence(_) = acquired {
        daemon.redis.execute("SADD", args![keys::gateway_sessions(&daemon.gateway_id), session_id]).await?;
    }
    Ok(acquired)
}

/// Extends one lease; `false` when the session is lost to this gateway.
pub async fn renew(daemon: &Daemon, org: &str, session_id: &str, fence: i64) -> Result<bool, RedisError> {
    let reply = first(&daemon.redis, "EVAL", args![
        RENEW, 2, keys::session_lease(org, session_id), keys::session(org, session_id),
        value(daemon, fence), fence, daemon.config.lease_ms as i64, daemon.gateway_id.as_str(),
    ])
    .await?;
    Ok(reply.as_int() == Some(1))
}

/// Gives the lease up and drops the session from the gateway's resume set.
pub async fn release(daemon: &Daemon, org: &str, session_id: &str, fence: i64) -> Result<(), RedisError> {
    daemon
        .redis
        .execute("EVAL", args![
            RELEASE, 2, keys::session_lease(org, session_id), keys::session(org, session_id),
            value(daemon, fence), fence, shared::time::now_millis(),
        ])
        .await?;
    forget(daemon, session_id).await
}

/// Drops the session from the gateway's resume set: a restart of this daemon leaves it alone.
pub async fn forget(daemon: &Daemon, session_id: &str) -> Result<(), RedisError> {
    daemon.redis.execute("SREM", args![keys::gateway_sessions(&daemon.gateway_id), session_id]).await.map(drop)
}

/// Marks this gateway alive for one lease period, and known to the others. The heartbeat names
/// this process, so a second live process with the same gateway id can be told apart.
pub async fn heartbeat(daemon: &Daemon) -> Result<(), RedisError> {
    let alive = keys::gateway_alive(&daemon.gateway_id);
    daemon.redis.execute("SET", args![alive, daemon.process.as_str(), "PX", daemon.config.lease_ms as i64]).await?;
    daemon.redis.execute("SADD", args![keys::gateways(), daemon.gateway_id.as_str()]).await.map(drop)
}

/// Refuses to run beside another live process of the same gateway: two processes would hold the
/// same leases with the same tokens, which fencing cannot tell apart. A heartbeat left by a
/// process that died (a quick restart) is not renewed; one that is renewed within a third of a
/// lease period belongs to a live process.
pub async fn ensure_sole_process(daemon: &Daemon) -> Result<(), RedisError> {
    let alive = keys::gateway_alive(&daemon.gateway_id);
    let read = async || -> Result<(Option<String>, i64), RedisError> {
        let holder = first(&daemon.redis, "GET", args![alive.as_str()]).await?.into_string();
        let ttl = first(&daemon.redis, "PTTL", args![alive.as_str()]).await?.as_int().unwrap_or(-2);
        Ok((holder, ttl))
    };
    let (holder, ttl) = read().await?;
    if holder.is_none() {
        return Ok(());
    }
    tokio::time::sleep(daemon.config.lease() / 3 + std::time::Duration::from_millis(300)).await;
    let (now_holder, now_ttl) = read().await?;
    if now_holder.is_some() && (now_holder != holder || now_ttl > ttl) {
        return Err(RedisError(format!("another live daemon runs as gateway {}; give each daemon its own GATEWAY_ID", daemon.gateway_id)));
    }
    Ok(())
}

/// Whether a gateway has renewed its heartbeat within the last lease period.
pub async fn is_alive(daemon: &Daemon, gateway_id: &str) -> Result<bool, RedisError> {
    shared::store::gateway_is_alive(&daemon.redis, gateway_id).await
}

/// The sessions a gateway ran when it last stopped, to resume (or, for a dead one, adopt).
pub async fn held_sessions(daemon: &Daemon, gateway_id: &str) -> Result<Vec<String>, RedisError> {
    let members = daemon.redis.execute("SMEMBERS", args![keys::gateway_sessions(gateway_id)]).await?;
    Ok(members.into_iter().filter_map(|m| m.into_string()).collect())
}
