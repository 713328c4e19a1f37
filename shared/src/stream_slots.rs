//! Bounds on open event streams. Each open stream holds a slot in three sorted sets: its
//! caller's, its organization's and the deployment's; a slot is a stream id scored by when it
//! lapses. A stream renews its slot while it runs and releases it when it ends; a stream whose
//! client simply went away lapses within [`Slot::ttl_ms`]. Taking a slot past a cap is refused,
//! so no caller can hold the host's instances and Redis connections hostage.

use crate::config::StreamLimits;
use crate::redis::{Redis, Reply};
use crate::secret::sha256_hex;
use crate::{ApiError, args, keys};

/// Drops lapsed slots, then takes one in each of KEYS[1..3] (caller, organization, deployment)
/// unless one is full: returns 0, or the number of the full one.
const TAKE: &str = r"
for i = 1, 3 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1]) end
for i = 1, 3 do
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 + i]) then return i end
end
for i = 1, 3 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3])
  redis.call('PEXPIREAT', KEYS[i], ARGV[2])
end
return 0";

/// Extends a slot while it is still there. Every slot lasts as long, so the newest deadline is
/// the latest one in each set: the set's own expiry follows it.
const RENEW: &str = r"
for i = 1, 3 do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
    redis.call('PEXPIREAT', KEYS[i], ARGV[2])
  end
end
return 1";

const RELEASE: &str = r"
for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1";

/// One stream's slot.
pub struct Slot {
    id: String,
    keys: [String; 3],
    /// How long the slot lasts unless renewed.
    pub ttl_ms: u64,
}

impl Slot {
    /// Takes a slot for a stream of `caller_id` in `org`, or refuses with 429 naming the cap.
    pub async fn take<R: Redis>(r: &R, org: &str, caller_id: &str, limits: StreamLimits, ttl_ms: u64) -> Result<Slot, ApiError> {
        let slot = Slot {
            id: ulid::Ulid::new().to_string(),
            keys: [keys::caller_streams(org, &sha256_hex(caller_id)), keys::org_streams(org), keys::all_streams()],
            ttl_ms,
        };
        let now = crate::time::now_millis();
        let [caller, organization, all] = &slot.keys;
        let argv = args![
            TAKE, 3, caller, organization, all, now, now + ttl_ms as i64, slot.id.as_str(),
            limits.per_caller as i64, limits.per_org as i64, limits.total as i64,
        ];
        let full = r.execute("EVAL", argv).await?.into_iter().next().and_then(|r: Reply| r.as_int()).unwrap_or(0);
        let retry = ttl_ms.div_ceil(1000);
        match full {
            0 => Ok(slot),
            1 => Err(ApiError::rate_limited("this caller has as many event streams open as it may", "caller", limits.per_caller, retry)),
            2 => Err(ApiError::rate_limited("this organization has as many event streams open as it may", "organization", limits.per_org, retry)),
            _ => Err(ApiError::rate_limited("the gateway has as many event streams open as it serves", "gateway", limits.total, retry)),
        }
    }

    pub async fn renew<R: Redis>(&self, r: &R) -> Result<(), ApiError> {
        let [caller, organization, all] = &self.keys;
        let until = crate::time::now_millis() + self.ttl_ms as i64;
        r.execute("EVAL", args![RENEW, 3, caller, organization, all, self.id.as_str(), until]).await?;
        Ok(())
    }

    pub async fn release<R: Redis>(&self, r: &R) -> Result<(), ApiError> {
        let [caller, organization, all] = &self.keys;
        r.execute("EVAL", args![RELEASE, 3, caller, organization, all, self.id.as_str()]).await?;
        Ok(())
    }
}
