//! A session's send rate, enforced: at most `ratePerMin` messages in any 60 s window and
//! `ratePerHour` in any 3,600 s window.
//!
//! The record is the session's sends of the last hour in Redis (message id → send time, by
//! Redis's clock so daemons' clocks never disagree), so a daemon restart or a failover to
//! another daemon neither resets the windows nor counts a message twice: a message resent after
//! a crash already holds its place.

use crate::daemon::Daemon;
use shared::redis::{RedisError, first};
use shared::{args, keys};
use std::time::Duration;

/// Takes a send for ARGV[1] unless a window is full; answers 0 when taken (or the message
/// holds one already), else how many ms until the window that is full has room. Each window is
/// counted ARGV[4] ms wider than it is, so the time a send takes to reach WhatsApp after its
/// place was taken never lets a window, seen from WhatsApp's side, hold one more.
const TAKE: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local function wait_for(window, limit)
  local count = redis.call('ZCOUNT', KEYS[1], '(' .. (now - window), '+inf')
  if count < limit then return 0 end
  local oldest = redis.call('ZRANGE', KEYS[1], '(' .. (now - window), '+inf', 'BYSCORE', 'LIMIT', count - limit, 1, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
local margin = tonumber(ARGV[4])
local wait = math.max(wait_for(60000 + margin, tonumber(ARGV[2])), wait_for(3600000 + margin, tonumber(ARGV[3])))
if wait > 0 then return wait end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000 - margin)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 3600000 + margin)
return 0";

/// How much wider than 60 s and 3,600 s the windows are counted.
const MARGIN_MS: i64 = 250;

/// The session's two rates.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub per_min: u32,
    pub per_hour: u32,
}

/// Takes a place for the message within the session's rates: `None` when taken, else how long
/// until one frees up.
pub async fn take(daemon: &Daemon, org: &str, session_id: &str, message_id: &str, rates: Rates) -> Result<Option<Duration>, RedisError> {
    let argv = args![TAKE, 1, keys::session_sends(org, session_id), message_id, rates.per_min.max(1) as i64, rates.per_hour.max(1) as i64, MARGIN_MS];
    let wait = first(&daemon.redis, "EVAL", argv).await?.as_int().unwrap_or(0);
    Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
}
