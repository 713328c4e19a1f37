//! What callers hold at once, counted in Redis: open event streams, and sends whose body
//! carries a file while they are read and stored. Each held thing is a slot in one sorted set
//! per level (a caller's, an organization's, the deployment's), a member scored by when it
//! lapses. A holder renews its slot while it runs and releases it when it ends; one whose
//! client simply went away (or whose instance died) lapses within [`Slot::ttl_ms`]. Taking a
//! slot past a cap is refused, so no caller can hold the host's instances, memory and Redis
//! connections hostage.

use crate::config::{LargeRequestLimits, StreamLimits};
use crate::redis::{Redis, Reply};
use crate::secret::sha256_hex;
use crate::{ApiError, args, keys};

/// Drops lapsed slots, then takes one in each level's set (KEYS, caps ARGV[4..]) unless one is
/// full: returns 0, or the number of the full one.
const TAKE: &str = r"
for i = 1, #KEYS do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1]) end
for i = 1, #KEYS do
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 + i]) then return i end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3])
  redis.call('PEXPIREAT', KEYS[i], ARGV[2])
end
return 0";

/// Extends a slot while it is still there. Every slot of a kind lasts as long, so the newest
/// deadline is the latest one in each set: the set's own expiry follows it.
const RENEW: &str = r"
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
    redis.call('PEXPIREAT', KEYS[i], ARGV[2])
  end
end
return 1";

const RELEASE: &str = r"
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1";

/// One level a slot is taken in: its set, its cap, and the refusal when it is full.
struct Level {
    key: String,
    cap: u64,
    refusal: &'static str,
    scope: &'static str,
}

/// One held slot.
pub struct Slot {
    id: String,
    keys: Vec<String>,
    /// How long the slot lasts unless renewed.
    pub ttl_ms: u64,
}

impl Slot {
    /// Takes a slot for an event stream of `caller_id` in `org`, or refuses with 429 naming the cap.
    pub async fn stream<R: Redis>(r: &R, org: &str, caller_id: &str, limits: StreamLimits, ttl_ms: u64) -> Result<Slot, ApiError> {
        let levels = [
            Level { key: keys::caller_streams(org, &sha256_hex(caller_id)), cap: limits.per_caller, refusal: "this caller has as many event streams open as it may", scope: "caller" },
            Level { key: keys::org_streams(org), cap: limits.per_org, refusal: "this organization has as many event streams open as it may", scope: "organization" },
            Level { key: keys::all_streams(), cap: limits.total, refusal: "the gateway has as many event streams open as it serves", scope: "gateway" },
        ];
        Slot::take(r, levels, ttl_ms).await
    }

    /// Takes a slot for a request of `org` whose body is large (a file), held while it is read
    /// and stored, or refuses with 429 before the body is read.
    pub async fn large_request<R: Redis>(r: &R, org: &str, limits: LargeRequestLimits, ttl_ms: u64) -> Result<Slot, ApiError> {
        let levels = [
            Level {
                key: keys::org_large_requests(org),
                cap: limits.per_org,
                refusal: "this organization has as many requests with files in progress as it may; send this one when one ends",
                scope: "organization_large_requests",
            },
            Level {
                key: keys::all_large_requests(),
                cap: limits.total,
                refusal: "the gateway is reading as many requests with files as it takes; retry shortly",
                scope: "gateway_large_requests",
            },
        ];
        Slot::take(r, levels, ttl_ms).await
    }

    async fn take<R: Redis, const N: usize>(r: &R, levels: [Level; N], ttl_ms: u64) -> Result<Slot, ApiError> {
        let id = ulid::Ulid::new().to_string();
        let now = crate::time::now_millis();
        let mut argv = args![TAKE, N as i64];
        argv.extend(levels.iter().map(|level| level.key.as_str().into()));
        argv.extend(args![now, now + ttl_ms as i64, id.as_str()]);
        argv.extend(levels.iter().map(|level| (level.cap.min(i64::MAX as u64) as i64).into()));
        let full = r.execute("EVAL", argv).await?.into_iter().next().and_then(|r: Reply| r.as_int()).unwrap_or(0);
        match usize::try_from(full).ok().filter(|&i| i >= 1).and_then(|i| levels.get(i - 1)) {
            None => Ok(Slot { id, keys: levels.into_iter().map(|level| level.key).collect(), ttl_ms }),
            Some(level) => Err(ApiError::rate_limited(level.refusal, level.scope, level.cap, ttl_ms.div_ceil(1000))),
        }
    }

    pub async fn renew<R: Redis>(&self, r: &R) -> Result<(), ApiError> {
        let until = crate::time::now_millis() + self.ttl_ms as i64;
        let mut argv = args![RENEW, self.keys.len() as i64];
        argv.extend(self.keys.iter().map(|key| key.as_str().into()));
        argv.extend(args![self.id.as_str(), until]);
        r.execute("EVAL", argv).await?;
        Ok(())
    }

    pub async fn release<R: Redis>(&self, r: &R) -> Result<(), ApiError> {
        let mut argv = args![RELEASE, self.keys.len() as i64];
        argv.extend(self.keys.iter().map(|key| key.as_str().into()));
        argv.push(self.id.as_str().into());
        r.execute("EVAL", argv).await?;
        Ok(())
    }
}
