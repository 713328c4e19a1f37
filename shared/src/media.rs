//! Media files of messages in Redis: how `GET …/messages/{id}/media` gets a file from the daemon
//! running the session, and the cache it answers from.
//!
//! The bytes of a file live on WhatsApp's media servers, encrypted; only a connected client can
//! fetch and decrypt them, with the reference WhatsApp gave ([`MediaRef`], kept on the message
//! hash, never shown). So a miss in the cache asks the session's daemon (a `fetch_media`
//! command, at most one in flight per message) and waits for the file to land in the cache, or
//! for the reason it could not.

use crate::command::{Command, CommandKind};
use crate::redis::{Arg, Redis, Reply, first};
use crate::session::Session;
use crate::store::{queue_command_lua, route_keys, routed};
use crate::{ApiError, ErrorCode, args, keys};
use serde::{Deserialize, Serialize};

/// The message hash's field holding its [`MediaRef`].
pub const REF_FIELD: &str = "mediaRef";

/// What WhatsApp needs to serve a file again: where it lies on the media servers and how it is
/// encrypted (binary fields in base64). Written for a sent file once uploaded (so an attempt
/// after a failed one sends it without uploading it again), for a received one as it arrives.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaRef {
    /// `image`, `video`, `audio`, `document` or `sticker`: WhatsApp encrypts each kind apart.
    pub kind: String,
    pub direct_path: String,
    pub media_key: String,
    pub file_sha256: String,
    pub file_enc_sha256: String,
    pub file_length: u64,
    /// What a message sending an uploaded file carries besides: its URL, when its key was made
    /// (Unix s), and for audio and video the table that lets players seek (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_key_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_sidecar: Option<String>,
}

/// Why a fetch failed, as the daemon records it for the waiting request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchError {
    /// `not_connected`, `no_reference`, `unavailable` (WhatsApp no longer has it), `too_large`, `failed`.
    pub code: String,
    pub message: String,
}

/// How long a recorded failure answers waiting requests before the next asks again.
pub const FAILURE_TTL_MS: i64 = 5_000;

/// Asks the daemon holding the session (ARGV[1], the row's `gatewayId`) to fetch a message's
/// file, unless it was cached meanwhile (KEYS[6]), a fetch is already pending, or one failed
/// moments ago (answered with its failure, so a client polling a lost file does not make the
/// number hit WhatsApp's media servers on every request): marks it
/// `pending` (KEYS[2], for ARGV[3] ms) and queues ARGV[2] on the holder's stream. `KEYS`: row,
/// fetch marker, the routing keys, the cache.
const REQUEST: &str = concat!(
    queue_command_lua!(),
    r"
local raw = redis.call('GET', KEYS[1])
if not raw then return redis.status_reply('gone') end
if holder_of(cjson.decode(raw)) ~= ARGV[1] then return redis.status_reply('moved') end
if redis.call('EXISTS', KEYS[6]) == 1 then return redis.status_reply('pending') end
if ARGV[1] == '' or redis.call('EXISTS', KEYS[5]) == 0 then return redis.status_reply('not_running') end
local marker = redis.call('GET', KEYS[2])
if marker == 'pending' then return redis.status_reply('pending') end
if marker then return marker end
redis.call('SET', KEYS[2], 'pending', 'PX', ARGV[3])
redis.call('XADD', KEYS[4], '*', 'command', ARGV[2])
return redis.status_reply('pending')"
);

/// One look at a fetch: whether the file is cached (KEYS[1]) and the fetch's marker (KEYS[2]).
const LOOK: &str = "return {redis.call('EXISTS', KEYS[1]), redis.call('GET', KEYS[2])}";

/// A cached file, if any.
pub async fn cached<R: Redis>(r: &R, org: &str, message_id: &str) -> Result<Option<Vec<u8>>, ApiError> {
    match first(r, "GET", args![keys::message_media(org, message_id)]).await? {
        Reply::Bytes(bytes) => Ok(Some(bytes)),
        _ => Ok(None),
    }
}

/// Asks the session's daemon to fetch the file of `message_id` (see [`REQUEST`]), for a request
/// that waits up to `wait_ms`. 409 `not_connected` when no daemon runs the session.
pub async fn request<R: Redis>(r: &R, session: &Session, message_id: &str, wait_ms: u64) -> Result<(), ApiError> {
    let (org, session_id) = (session.organization_id.as_str(), session.id.as_str());
    let mut command = Command::new(CommandKind::FetchMedia, session_id, org);
    command.message_id = Some(message_id.to_owned());
    let command = command.to_json();
    let reply = routed(r, org, session_id, session.gateway_id.clone(), async |holder| {
        let mut argv = args![REQUEST, 6, keys::session(org, session_id), keys::message_media_fetch(org, message_id)];
        argv.extend(route_keys(holder));
        argv.push(keys::message_media(org, message_id).into());
        argv.extend(args![holder.unwrap_or(""), command.as_str(), wait_ms as i64]);
        Ok(first(r, "EVAL", argv).await?.into())
    })
    .await?;
    match reply {
        Reply::Status(s) if s == "pending" => Ok(()),
        Reply::Status(s) if s == "gone" => Err(ApiError::session_not_found()),
        Reply::Bytes(failure) => Err(fetch_error(serde_json::from_slice(&failure).ok())),
        _ => Err(not_connected()),
    }
}

/// What became of a fetch so far: `Some(Ok(()))` once the file is cached, `Some(Err)` when it
/// failed, `None` while pending.
pub async fn look<R: Redis>(r: &R, org: &str, message_id: &str) -> Result<Option<Result<(), ApiError>>, ApiError> {
    let reply = r.execute("EVAL", args![LOOK, 2, keys::message_media(org, message_id), keys::message_media_fetch(org, message_id)]).await?;
    let mut items = reply.into_iter();
    if items.next().and_then(|n| n.as_int()) == Some(1) {
        return Ok(Some(Ok(())));
    }
    match items.next().and_then(Reply::into_string) {
        Some(marker) if marker == "pending" => Ok(None),
        Some(failure) => Ok(Some(Err(fetch_error(serde_json::from_str(&failure).ok())))),
        // Neither pending nor failed: the marker lapsed, so the daemon never answered.
        None => Ok(Some(Err(ApiError::new(ErrorCode::Timeout, "the session's gateway did not fetch the file in time; try again")))),
    }
}

/// Caches a file (KEYS[1] = the cache prefix ARGV[5] and the message id ARGV[3]) for ARGV[2]
/// ms within the organization's budget of ARGV[4] bytes, and ends its fetch (KEYS[2]). The
/// budget's books: KEYS[3] (id → when cached), KEYS[4] (id → bytes), KEYS[5] (their total).
/// Files that lapsed are struck off first, then the oldest go until the new one fits. Answers
/// 0 when the file alone is larger than the budget (nothing cached).
const CACHE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl, cap, size = tonumber(ARGV[2]), tonumber(ARGV[4]), #ARGV[1]
local total = tonumber(redis.call('GET', KEYS[5]) or '0')
local function forget(id, evict)
  total = total - tonumber(redis.call('HGET', KEYS[4], id) or '0')
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[3], id)
  if evict then redis.call('DEL', ARGV[5] .. id) end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - ttl, 'LIMIT', 0, 100)) do forget(id, false) end
forget(ARGV[3], false)
if size > cap then
  redis.call('SET', KEYS[5], math.max(total, 0))
  return 0
end
while total + size > cap do
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #oldest == 0 then break end
  forget(oldest[1], true)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[3], now, ARGV[3])
redis.call('HSET', KEYS[4], ARGV[3], size)
redis.call('SET', KEYS[5], math.max(total, 0) + size)
redis.call('DEL', KEYS[2])
return 1";

/// How the cache is bounded: each file's lifetime, and what one organization's files may add
/// up to.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub ttl_ms: u64,
    pub max_bytes: u64,
}

/// Caches a fetched or sent file and ends its fetch (see [`CACHE`]); `false` when the file is
/// larger than the whole cache.
pub async fn store<R: Redis>(r: &R, org: &str, message_id: &str, bytes: Vec<u8>, limits: CacheLimits) -> Result<bool, ApiError> {
    let argv = vec![
        Arg::from(CACHE), Arg::Int(5),
        keys::message_media(org, message_id).into(), keys::message_media_fetch(org, message_id).into(),
        keys::org_media_cache(org).into(), keys::org_media_cache_sizes(org).into(), keys::org_media_cache_total(org).into(),
        Arg::Bytes(bytes), Arg::Int(limits.ttl_ms as i64), message_id.into(), Arg::Int(limits.max_bytes as i64),
        keys::message_media(org, "").into(),
    ];
    Ok(first(r, "EVAL", argv).await?.as_int() == Some(1))
}

/// Records why a fetch failed, for the requests waiting on it.
pub async fn fail<R: Redis>(r: &R, org: &str, message_id: &str, error: &FetchError) -> Result<(), ApiError> {
    let json = serde_json::to_string(error).unwrap_or_default();
    r.execute("SET", args![keys::message_media_fetch(org, message_id), json, "PX", FAILURE_TTL_MS]).await?;
    Ok(())
}

/// The reference to fetch a message's file again, when WhatsApp gave one.
pub async fn reference<R: Redis>(r: &R, org: &str, message_id: &str) -> Result<Option<MediaRef>, ApiError> {
    let raw = first(r, "HGET", args![keys::message(org, message_id), REF_FIELD]).await?.into_string();
    Ok(raw.and_then(|raw| serde_json::from_str(&raw).ok()))
}

/// Keeps the reference of a file just uploaded, beside its message (not on a message that lapsed
/// meanwhile: that would leave a hash without content or TTL).
pub async fn keep_reference<R: Redis>(r: &R, org: &str, message_id: &str, media: &MediaRef) -> Result<(), ApiError> {
    let json = serde_json::to_string(media).unwrap_or_default();
    let script = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 1";
    r.execute("EVAL", args![script, 1, keys::message(org, message_id), REF_FIELD, json]).await?;
    Ok(())
}

/// The bytes given inline with a message, while it waits to go out.
pub async fn upload<R: Redis>(r: &R, org: &str, message_id: &str) -> Result<Option<Vec<u8>>, ApiError> {
    match first(r, "GET", args![keys::message_upload(org, message_id)]).await? {
        Reply::Bytes(bytes) => Ok(Some(bytes)),
        _ => Ok(None),
    }
}

fn not_connected() -> ApiError {
    ApiError::new(ErrorCode::Conflict, "the session is not connected to WhatsApp, which holds the file; start it and try again")
        .with_detail("reason", "not_connected")
}

/// The API's answer for a failed fetch.
fn fetch_error(error: Option<FetchError>) -> ApiError {
    let Some(FetchError { code, message }) = error else { return ApiError::internal("unreadable fetch failure") };
    let status = match code.as_str() {
        "not_connected" => return not_connected(),
        "no_reference" | "unavailable" => ErrorCode::NotFound,
        "too_large" => ErrorCode::PayloadTooLarge,
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(status, message).with_detail("reason", code)
}
