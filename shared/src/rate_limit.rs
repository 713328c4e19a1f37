//! Fixed-window counters in Redis, for limits that must hold on every host and across restarts
//! (how often WhatsApp may be asked for a phone pairing code, say).

use crate::redis::{Redis, first};
use crate::{ApiError, args, keys};

/// Counts one use in the window and returns the count; the window's key expires with it.
const HIT: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count";

/// Counts one use of `scope` by `subject` in the current window of `window_secs`; past `limit`
/// uses in it, refuses with 429 and when the window ends. A `limit` of 0 means no limit.
pub async fn hit<R: Redis>(r: &R, scope: &str, subject: &str, limit: u64, window_secs: u64, message: &str) -> Result<(), ApiError> {
    if limit == 0 {
        return Ok(());
    }
    let window_secs = window_secs.max(1);
    let now = crate::time::now_secs();
    let key = keys::rate_window(scope, &crate::secret::sha256_hex(subject), now / window_secs);
    let count = first(r, "EVAL", args![HIT, 1, key, window_secs as i64]).await?.as_int().unwrap_or(0);
    if count as u64 > limit {
        return Err(ApiError::rate_limited(message, scope, limit, window_secs - now % window_secs));
    }
    Ok(())
}
