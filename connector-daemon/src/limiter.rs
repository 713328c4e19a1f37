//! A session's send rate, enforced: at most `ratePerMin` messages in any 60 s window and
//! `ratePerHour` in any 3,600 s window, and (anti-ban pacing) never two sends to one chat
//! within the daemon's `SEND_CHAT_GAP_MS`.
//!
//! The record is the session's sends of the last hour in Redis (a place per attempt at a
//! message, [`place`] → send time, by Redis's clock so daemons' clocks never disagree), so a
//! daemon restart or a failover to another daemon neither resets the windows nor counts an
//! attempt twice: a message resent after a crash already holds its place, while one sent again
//! after a failure takes another, as WhatsApp sees two sends. The sender takes a place in the
//! same script that picks the message (see `outbox`), so a send costs one round trip before it
//! goes out.

use shared::redis::{Redis, RedisError};
use shared::{args, keys};

/// A Lua function: `take_place(sends, message, per_min, per_hour, now, margin, chat_sends,
/// chat, gap)` takes a place for `message` in the sorted set `sends` unless a window is full or
/// `chat` got a send (in `chat_sends`) less than `gap` ms ago; 0 when taken (or the message
/// holds one already), else how many ms until there is room. Each window is
/// counted `margin` ms wider than it is, so the time a send takes to reach WhatsApp after its
/// place was taken never lets a window, seen from WhatsApp's side, hold one more.
macro_rules! limiter_lua {
    () => {
        r"
local function take_place(sends, message, per_min, per_hour, now, margin, chat_sends, chat, gap)
  if redis.call('ZSCORE', sends, message) then return 0 end
  if gap > 0 then
    redis.call('ZREMRANGEBYSCORE', chat_sends, '-inf', now - gap)
    local last = tonumber(redis.call('ZSCORE', chat_sends, chat))
    if last then return last + gap - now end
  end
  local function wait_for(window, limit)
    local count = redis.call('ZCOUNT', sends, '(' .. (now - window), '+inf')
    if count < limit then return 0 end
    local oldest = redis.call('ZRANGE', sends, '(' .. (now - window), '+inf', 'BYSCORE', 'LIMIT', count - limit, 1, 'WITHSCORES')
    return tonumber(oldest[2]) + window - now
  end
  local wait = math.max(wait_for(60000 + margin, math.max(per_min, 1)), wait_for(3600000 + margin, math.max(per_hour, 1)))
  if wait > 0 then return wait end
  redis.call('ZREMRANGEBYSCORE', sends, '-inf', now - 3600000 - margin)
  redis.call('ZADD', sends, now, message)
  redis.call('PEXPIRE', sends, 3600000 + margin)
  if gap > 0 then
    redis.call('ZADD', chat_sends, now, chat)
    redis.call('PEXPIRE', chat_sends, gap)
  end
  return 0
end
"
    };
}
pub(crate) use limiter_lua;

/// The place of a message's `attempt`-th attempt (from 0) in the session's sends; the outbox
/// script spells it the same way.
pub fn place(message_id: &str, attempt: i64) -> String {
    format!("{message_id}#{attempt}")
}

/// How much wider than 60 s and 3,600 s the windows are counted.
pub const MARGIN_MS: i64 = 250;

/// Moves a place (ARGV[1]) in the sends (KEYS[1]), and its chat's (ARGV[2]) last send
/// (KEYS[2]), to now, by Redis's clock.
const RESTAMP: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', now, ARGV[2])
return 1";

/// A send that waited after taking its place (while "typing…" showed) counts from when it
/// goes out, so the windows hold as WhatsApp sees them.
pub async fn restamp<R: Redis>(r: &R, org: &str, session_id: &str, place: &str, chat: &str) -> Result<(), RedisError> {
    let argv = args![RESTAMP, 2, keys::session_sends(org, session_id), keys::session_chat_sends(org, session_id), place, chat];
    r.execute("EVAL", argv).await.map(drop)
}
