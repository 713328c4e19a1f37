//! Per-organization quotas: how much one organization may take of what every organization
//! shares. Each has a deployment default (a Spin variable) and may be overridden for one
//! organization (the hash [`keys::org_quotas`], set with `cargo xtask quota`). Past one the
//! answer is 429 with `details.scope` and a `Retry-After`, and it is refused from what the
//! request's headers say, before its body is read.

use crate::config::{self, Variables};
use crate::redis::{Redis, Reply};
use crate::{ApiError, args, keys};

/// Messages an organization's sessions accept per minute, together.
pub const MESSAGES_PER_MINUTE: &str = "messagesPerMinute";
/// The deployment default of [`MESSAGES_PER_MINUTE`] (`org_messages_per_minute`; 0: none).
pub const DEFAULT_MESSAGES_PER_MINUTE: u64 = 1_200;
/// The quotas an override may set.
pub const QUOTAS: &[&str] = &[MESSAGES_PER_MINUTE];

const MINUTE_MS: i64 = 60_000;

/// This minute's count of accepted messages and its limit: the send script checks and counts
/// it in the same step as it accepts the message.
#[derive(Debug, Clone)]
pub struct MessageWindow {
    pub key: String,
    /// 0: no limit.
    pub limit: u64,
    /// When the window ends (ms): the counter expires then.
    pub ends_at: i64,
}

impl MessageWindow {
    /// The 429 of a full window.
    pub fn exceeded(&self, now: i64) -> ApiError {
        ApiError::rate_limited(
            format!("the organization's sessions accepted {} messages this minute, its quota; wait for the next minute", self.limit),
            "organization_messages",
            self.limit,
            ((self.ends_at - now).max(0) as u64).div_ceil(1_000),
        )
    }
}

/// The organization's window for messages at `now`, with its limit (the override, else the
/// deployment's), refused already when it is full: one round trip, before the body is read.
pub async fn messages<R: Redis, V: Variables>(r: &R, vars: &V, org: &str, now: i64) -> Result<MessageWindow, ApiError> {
    let minute = now.div_euclid(MINUTE_MS);
    let key = keys::org_message_window(org, minute);
    let reply = r.execute("EVAL", args![READ, 2, keys::org_quotas(org), key.as_str(), MESSAGES_PER_MINUTE]).await?;
    let mut values = reply.into_iter().map(Reply::into_string);
    let limit = match values.next().flatten().and_then(|v| v.parse().ok()) {
        Some(limit) => limit,
        None => config::org_messages_per_minute(vars).await,
    };
    let used: u64 = values.next().flatten().and_then(|v| v.parse().ok()).unwrap_or(0);
    let window = MessageWindow { key, limit, ends_at: (minute + 1) * MINUTE_MS };
    if limit > 0 && used >= limit {
        return Err(window.exceeded(now));
    }
    Ok(window)
}

/// An organization's override of a quota (KEYS[1], field ARGV[1]) and a window's count
/// (KEYS[2]).
const READ: &str = r"
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('GET', KEYS[2])}";

/// Sets (or, with `None`, removes) an organization's override of `quota`.
pub async fn set<R: Redis>(r: &R, org: &str, quota: &str, value: Option<u64>) -> Result<(), ApiError> {
    if !QUOTAS.contains(&quota) {
        return Err(ApiError::invalid_field("quota", format!("is not one of {QUOTAS:?}")));
    }
    match value {
        Some(value) => r.execute("HSET", args![keys::org_quotas(org), quota, value as i64]).await?,
        None => r.execute("HDEL", args![keys::org_quotas(org), quota]).await?,
    };
    Ok(())
}

/// An organization's overrides.
pub async fn overrides<R: Redis>(r: &R, org: &str) -> Result<Vec<(String, String)>, ApiError> {
    Ok(crate::redis::hash_fields(r.execute("HGETALL", args![keys::org_quotas(org)]).await?).into_iter().collect())
}
