//! Session rows in Redis: create, read, list and delete, scoped to one organization.

use crate::command::Command;
use crate::redis::{Redis, RedisError, Reply, first};
use crate::session::Session;
use crate::{ApiError, args, keys};

/// Writes the row and its index entry together, refusing to overwrite an existing row. The
/// index is scored by a per-organization counter, so listing order is exact creation order
/// even for sessions created within the same millisecond.
const CREATE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
  return 1
end
return 0";

/// Removes the row and its index entry together, returning the row so the caller knows who held it.
const DELETE: &str = r"
local row = redis.call('GET', KEYS[1])
if row then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return row";

/// The organization's rows in index order, in one round trip. Row keys are built from the
/// prefix in ARGV[1]; they share KEYS[1]'s hash tag, so they live on its cluster slot.
/// MGET goes in chunks to stay under Lua's `unpack` limit.
const LIST: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local rows = {}
for first = 1, #ids, 1000 do
  local keys = {}
  for i = first, math.min(first + 999, #ids) do keys[#keys + 1] = ARGV[1] .. ids[i] end
  for _, row in ipairs(redis.call('MGET', unpack(keys))) do rows[#rows + 1] = row end
end
return rows";

fn decode(reply: Reply) -> Result<Option<Session>, ApiError> {
    match reply.into_string() {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("stored session is unreadable: {e}"))),
    }
}

pub async fn create<R: Redis>(r: &R, session: &Session) -> Result<(), ApiError> {
    let json = serde_json::to_string(session).map_err(|e| ApiError::internal(e.to_string()))?;
    let org = &session.organization_id;
    let created = first(
        r,
        "EVAL",
        args![CREATE, 3, keys::session(org, &session.id), keys::org_sessions(org), keys::org_session_counter(org), json, &session.id],
    )
    .await?;
    if created.as_int() != Some(1) {
        return Err(ApiError::internal("session id collision"));
    }
    // Platform-wide owner index lives outside the organization's slot, so it is a second write.
    r.execute("SET", args![keys::session_owner(&session.id), org]).await?;
    Ok(())
}

/// The caller's session, or 404: another organization's id resolves to a key that does not exist.
pub async fn get<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Session, ApiError> {
    if !crate::validate::is_safe_id(session_id) {
        return Err(ApiError::session_not_found());
    }
    decode(first(r, "GET", args![keys::session(org, session_id)]).await?)?.ok_or_else(ApiError::session_not_found)
}

/// All of the organization's sessions, oldest first.
pub async fn list<R: Redis>(r: &R, org: &str) -> Result<Vec<Session>, ApiError> {
    let rows = r.execute("EVAL", args![LIST, 1, keys::org_sessions(org), keys::session(org, "")]).await?;
    let mut sessions = Vec::with_capacity(rows.len());
    for row in rows {
        // An index entry whose row is gone (an interrupted write) is skipped, not an error.
        sessions.extend(decode(row)?);
    }
    Ok(sessions)
}

/// Deletes the row and returns it; 404 when the caller's organization has no such session.
pub async fn delete<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<Session, ApiError> {
    if !crate::validate::is_safe_id(session_id) {
        return Err(ApiError::session_not_found());
    }
    let row = first(r, "EVAL", args![DELETE, 2, keys::session(org, session_id), keys::org_sessions(org), session_id])
        .await?;
    let session = decode(row)?.ok_or_else(ApiError::session_not_found)?;
    r.execute("DEL", args![keys::session_owner(session_id)]).await?;
    Ok(session)
}

/// Queues a command for the daemon holding the session, or for any daemon when none holds it.
pub async fn enqueue<R: Redis>(r: &R, gateway_id: Option<&str>, command: &Command) -> Result<(), RedisError> {
    let stream = gateway_id.map_or_else(keys::unplaced_commands, keys::gateway_commands);
    let mut args = args![stream, "*"];
    args.extend(command.to_fields());
    r.execute("XADD", args).await.map(drop)
}
