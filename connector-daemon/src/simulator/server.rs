//! What the simulated WhatsApp server keeps, in Redis so that every daemon's simulator sees one
//! server: whether it is reachable, which client of a device is online, the media servers'
//! files, and the records tests read (what reached it, what sessions showed).

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use shared::keys;
use shared::media::MediaRef;
use std::time::Duration;

/// Whether the simulated server answers: not while a test holds `gw:simulator:outage`, nor
/// while its state in Redis is out of reach.
pub async fn reachable(redis: &mut ConnectionManager) -> Result<(), String> {
    match redis.exists::<_, bool>(keys::simulator_outage()).await {
        Ok(false) => Ok(()),
        Ok(true) => Err("the simulated server is unreachable (outage)".to_owned()),
        Err(e) => Err(format!("the simulated server is unreachable: {e}")),
    }
}

/// Appends a JSON record to one of the lists tests read (oldest first).
pub async fn record(redis: &mut ConnectionManager, key: &str, record: serde_json::Value) -> redis::RedisResult<()> {
    redis.rpush::<_, _, i64>(key, record.to_string()).await.map(drop)
}

/// How long the simulated media servers keep a file.
const MEDIA_TTL_SECS: u64 = 86_400;

/// Puts a file on the simulated media servers, under a path of its hash, and answers the
/// reference a message carries to it. The simulated servers keep files as they are: the
/// encrypted hash is the plain one.
pub async fn upload(redis: &mut ConnectionManager, kind: &str, file: &[u8]) -> redis::RedisResult<MediaRef> {
    use base64::Engine;
    let sha = shared::secret::sha256(file);
    let path = format!("/v/t62.{kind}/{}", shared::secret::sha256_hex(file));
    let () = redis.set_ex(keys::simulator_media(&path), file, MEDIA_TTL_SECS).await?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let url = format!("https://mmg.whatsapp.net{path}");
    Ok(MediaRef {
        kind: kind.to_owned(),
        direct_path: path,
        media_key: b64(&rand::random::<[u8; 32]>()),
        file_sha256: b64(&sha),
        file_enc_sha256: b64(&sha),
        file_length: file.len() as u64,
        url: Some(url),
        media_key_timestamp: Some(shared::time::now_secs() as i64),
        streaming_sidecar: None,
    })
}

/// How long a client's online record lasts unless refreshed, and how often it is refreshed.
pub const ONLINE_TTL_MS: u64 = 1_000;
pub const ONLINE_REFRESH: Duration = Duration::from_millis(300);

/// Refreshes a client's online record (KEYS[1]) while it is still that client's (ARGV[1]) or
/// lapsed, for ARGV[2] ms; 0 when another client holds it.
pub const REFRESH_ONLINE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1";

/// Removes a client's online record (KEYS[1]) if it is still that client's (ARGV[1]).
pub const DROP_ONLINE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";
