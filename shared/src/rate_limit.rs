//! Fixed-window counters in Redis, for limits that must hold on every host and across restarts
//! (how often WhatsApp may be asked for a phone pairing code, say).

use crate::redis::{Redis, first};
use crate::{ApiError, args, keys};

/// Refuses (the number of the full window, from 1) when one of the windows KEYS[i] already
/// counts ARGV[1 + i] uses (a limit of 0: none); otherwise counts one use in each. Every window
/// expires with its period (ARGV[1] seconds). Checking all before counting any means a refused
/// use is counted nowhere.
const HIT: &str = r"
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + i])
  if limit > 0 and tonumber(redis.call('GET', KEYS[i]) or '0') >= limit then return i end
end
for i = 1, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return 0";

/// One limit: at most `limit` uses by `subject` in `scope` per window (0: no limit).
pub struct Limit<'a> {
    pub scope: &'a str,
    pub subject: &'a str,
    pub limit: u64,
    /// What the refusal says.
    pub message: &'a str,
}

/// Counts one use against every limit in the current window of `window_secs`, or refuses with
/// 429 (naming the limit, and when the window ends) when one of them is reached.
pub async fn hit<R: Redis>(r: &R, limits: &[Limit<'_>], window_secs: u64) -> Result<(), ApiError> {
    let window_secs = window_secs.max(1);
    let now = crate::time::now_secs();
    let window = now / window_secs;
    let mut argv = args![HIT, limits.len() as i64];
    argv.extend(limits.iter().map(|l| keys::rate_window(l.scope, &crate::secret::sha256_hex(l.subject), window).into()));
    argv.push((window_secs as i64).into());
    argv.extend(limits.iter().map(|l| (l.limit.min(i64::MAX as u64) as i64).into()));
    let full = first(r, "EVAL", argv).await?.as_int().unwrap_or(0);
    match usize::try_from(full).ok().filter(|i| *i >= 1).and_then(|i| limits.get(i - 1)) {
        Some(limit) => Err(ApiError::rate_limited(limit.message, limit.scope, limit.limit, window_secs - now % window_secs)),
        None => Ok(()),
    }
}
