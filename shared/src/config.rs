//! Deployment settings, read from Spin variables (spin.toml `[variables]`, overridable with
//! `SPIN_VARIABLE_<NAME>`). Empty means unset, so a manifest can declare every variable with a
//! harmless default. Each setting is read only when a request needs it: every read is a host
//! call, and an api-key request needs none of the JWT settings.

/// Where settings come from: Spin's variables in a component, a map natively.
#[allow(async_fn_in_trait)]
pub trait Variables {
    async fn get(&self, name: &str) -> Option<String>;
}

async fn setting<V: Variables>(vars: &V, name: &str) -> Option<String> {
    vars.get(name).await.filter(|v| !v.trim().is_empty())
}

async fn number<V: Variables>(vars: &V, name: &str, default: u64) -> u64 {
    setting(vars, name).await.and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub async fn redis_url<V: Variables>(vars: &V) -> String {
    setting(vars, "redis_url").await.unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

pub async fn max_body_bytes<V: Variables>(vars: &V) -> usize {
    number(vars, "max_body_bytes", 64 * 1024).await as usize
}

/// How long a lifecycle endpoint waits for the daemon to carry its command out before it
/// answers with the row as it stands (the command stays queued either way).
pub async fn command_wait_ms<V: Variables>(vars: &V) -> u64 {
    number(vars, "command_wait_ms", 3_000).await
}

/// How long the pairing-code endpoint waits for WhatsApp's code before answering `timeout`.
pub async fn pairing_code_wait_ms<V: Variables>(vars: &V) -> u64 {
    number(vars, "pairing_code_wait_ms", 20_000).await
}

/// How often an idle event stream sends a keep-alive comment, so proxies keep it open and a
/// client notices a dead connection.
pub async fn event_keepalive_ms<V: Variables>(vars: &V) -> u64 {
    number(vars, "event_keepalive_ms", 15_000).await.max(1)
}

/// The `retry:` hint on event streams: how long a client waits before reconnecting.
pub async fn event_retry_ms<V: Variables>(vars: &V) -> u64 {
    number(vars, "event_retry_ms", 3_000).await
}

/// How long a minted stream token may wait for its one use.
pub async fn stream_token_ttl_secs<V: Variables>(vars: &V) -> u64 {
    number(vars, "stream_token_ttl_secs", 60).await.max(1)
}

/// How many event streams may be open at once: per caller (api-key or user), per
/// organization, and in the whole deployment. The one past a cap is refused with 429.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamLimits {
    pub per_caller: u64,
    pub per_org: u64,
    pub total: u64,
}

pub async fn stream_limits<V: Variables>(vars: &V) -> StreamLimits {
    StreamLimits {
        per_caller: number(vars, "event_streams_per_caller", 10).await.max(1),
        per_org: number(vars, "event_streams_per_org", 50).await.max(1),
        total: number(vars, "event_streams_total", 200).await.max(1),
    }
}

/// Requests whose body carries a file (past `max_body_bytes`), read and stored at once: per
/// organization, and in the whole deployment. Each holds its body (a file of `media_max_bytes`
/// in base64) and its copies in an instance's memory, so these caps bound the bodies the host
/// reads at once; the one past a cap is refused with 429 from its headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LargeRequestLimits {
    pub per_org: u64,
    pub total: u64,
}

pub async fn large_request_limits<V: Variables>(vars: &V) -> LargeRequestLimits {
    LargeRequestLimits {
        per_org: number(vars, "large_requests_per_org", 2).await.max(1),
        total: number(vars, "large_requests_total", 8).await.max(1),
    }
}

/// How long one event stream lasts before the gateway ends it (the client resumes with
/// `Last-Event-ID`), so no stream holds its slot and its credential's grant forever.
pub async fn event_stream_max_secs<V: Variables>(vars: &V) -> u64 {
    number(vars, "event_stream_max_secs", 3_600).await.max(1)
}

/// How often an open stream checks that its credential still holds (at most every minute).
pub async fn event_recheck_secs<V: Variables>(vars: &V) -> u64 {
    number(vars, "event_recheck_secs", 60).await.clamp(1, 60)
}

/// Phone pairing codes WhatsApp may be asked for in an hour (each makes WhatsApp prompt that
/// phone); 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairingCodeLimits {
    pub per_session: u64,
    /// Per phone number, within one organization.
    pub per_phone: u64,
    /// Per phone number, across the deployment.
    pub per_phone_total: u64,
}

pub async fn pairing_codes_per_hour<V: Variables>(vars: &V) -> PairingCodeLimits {
    PairingCodeLimits {
        per_session: number(vars, "pairing_codes_per_session_per_hour", 5).await,
        per_phone: number(vars, "pairing_codes_per_phone_per_hour", 3).await,
        per_phone_total: number(vars, "pairing_codes_per_phone_per_hour_total", 10).await,
    }
}

/// What the API applies to messages it accepts: the outbox cap per session (429 beyond), how
/// long a message may wait queued before it fails as `expired` (`message_max_queued_secs`),
/// how long messages are kept, and how long an `Idempotency-Key` is remembered (24 h).
pub async fn message_limits<V: Variables>(vars: &V) -> crate::outbox::Limits {
    crate::outbox::Limits {
        queue_max: number(vars, "message_queue_max", 1_000).await.max(1),
        max_queued_ms: number(vars, "message_max_queued_secs", 86_400).await.max(1) * 1_000,
        retention_ms: number(vars, "message_retention_secs", 7 * 86_400).await.max(60) * 1_000,
        idempotency_ms: 86_400_000,
        media_max_bytes: media_max_bytes(vars).await,
        media_queue_max_bytes: number(vars, "media_queue_max_bytes", 64 * 1024 * 1024).await.max(1),
        log: event_retention(vars).await,
    }
}

/// How much of each organization's event log is kept ([`crate::event_log::Retention`]); the
/// daemon's `EVENT_RETENTION_COUNT`, `EVENT_RETENTION_SECS` and `EVENT_LOG_MAX_LEN` should say
/// the same, as every writer trims.
pub async fn event_retention<V: Variables>(vars: &V) -> crate::event_log::Retention {
    let default = crate::event_log::Retention::default();
    crate::event_log::Retention {
        count: number(vars, "event_retention_count", default.count).await.max(1),
        max_age_ms: number(vars, "event_retention_secs", default.max_age_ms / 1_000).await.saturating_mul(1_000),
        max_len: number(vars, "event_log_max_len", default.max_len).await,
    }
}

/// The largest media file a message carries or `GET …/media` serves (bytes); the daemon's
/// `MEDIA_MAX_BYTES` should say the same.
pub async fn media_max_bytes<V: Variables>(vars: &V) -> u64 {
    number(vars, "media_max_bytes", 16 * 1024 * 1024).await.max(1)
}

/// How long `GET …/media` waits for the session's gateway to fetch a file from WhatsApp.
pub async fn media_wait_ms<V: Variables>(vars: &V) -> u64 {
    number(vars, "media_wait_ms", 20_000).await.max(100)
}

/// Messages one organization's sessions accept per minute together, unless the organization's
/// override says otherwise (`shared::quota`); 0 means no limit.
pub async fn org_messages_per_minute<V: Variables>(vars: &V) -> u64 {
    number(vars, "org_messages_per_minute", crate::quota::DEFAULT_MESSAGES_PER_MINUTE).await
}

/// Sessions one organization may have; 0 means no limit.
pub async fn max_sessions_per_org<V: Variables>(vars: &V) -> u64 {
    match number(vars, "max_sessions_per_org", 100).await {
        0 => u64::MAX,
        quota => quota,
    }
}

/// How long a pairing link (`POST …/pairing-link`) works.
pub async fn pairing_link_ttl_secs<V: Variables>(vars: &V) -> u64 {
    number(vars, "pairing_link_ttl_secs", 600).await.clamp(60, 86_400)
}

/// Webhook endpoints one organization may register.
pub async fn max_webhooks_per_org<V: Variables>(vars: &V) -> u64 {
    number(vars, "max_webhooks_per_org", 10).await.max(1)
}

/// Whether webhook URLs may point at loopback, private and link-local addresses; the daemon's
/// `WEBHOOK_ALLOW_PRIVATE` should say the same.
pub async fn webhook_allow_private<V: Variables>(vars: &V) -> bool {
    setting(vars, "webhook_allow_private").await.is_some_and(|v| v == "true")
}

/// How long a rotated-out webhook secret still signs deliveries beside the new one.
pub async fn webhook_secret_overlap_ms<V: Variables>(vars: &V) -> u64 {
    number(vars, "webhook_secret_overlap_secs", 86_400).await * 1_000
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimNames {
    pub user: String,
    pub organization: String,
    pub org_role: String,
    pub platform_role: String,
}

/// Login-JWT verification settings. JWTs are accepted only when a key source, an issuer and an
/// audience are all configured: a half-configured deployment must not accept any login token.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// An inline JWKS document, for deployments without a JWKS endpoint.
    pub jwks: Option<String>,
    pub jwks_url: Option<String>,
    pub claims: ClaimNames,
    /// How long a fetched JWKS is reused from the Redis cache.
    pub jwks_cache_secs: u64,
    /// How often at most an unknown `kid` may trigger a refetch.
    pub jwks_refetch_secs: u64,
    /// How long past `jwks_cache_secs` a cached JWKS keeps serving while refetches fail.
    pub jwks_stale_secs: u64,
    /// A JWKS fetch gives up after this long, and refuses a document larger than `jwks_max_bytes`.
    pub jwks_fetch_timeout_ms: u64,
    pub jwks_max_bytes: usize,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Keys fetched in the clear can be swapped by anyone on the path: `jwks_url` must be https
    /// unless the operator opts in (a JWKS on a trusted local network).
    pub allow_http: bool,
}

impl JwtSettings {
    /// The settings, `None` when login JWTs are not configured; an error when `jwks_url` is
    /// plain http without the operator's opt-in.
    pub async fn load<V: Variables>(vars: &V) -> Result<Option<JwtSettings>, crate::ApiError> {
        Ok(match JwtSettings::read(vars).await {
            Some(settings) if settings.jwks_url.as_deref().is_some_and(|url| !url.starts_with("https://")) && !settings.allow_http => {
                return Err(crate::ApiError::new(crate::ErrorCode::Unavailable, "login tokens cannot be checked: jwks_url must be https (or set jwks_allow_http)")
                    .with_detail("reason", "insecure_jwks_url"));
            }
            settings => settings,
        })
    }

    async fn read<V: Variables>(vars: &V) -> Option<JwtSettings> {
        let claim = async |name: &str, default: &str| setting(vars, name).await.unwrap_or_else(|| default.to_owned());
        let jwks = setting(vars, "jwks").await;
        let jwks_url = setting(vars, "jwks_url").await;
        if jwks.is_none() && jwks_url.is_none() {
            return None;
        }

        Some(JwtSettings {
            issuer: setting(vars, "jwt_issuer").await?,
            audience: setting(vars, "jwt_audience").await?,
            jwks,
            jwks_url,
            claims: ClaimNames {
                user: claim("jwt_claim_user", "sub").await,
                organization: claim("jwt_claim_org", "org_id").await,
                org_role: claim("jwt_claim_org_role", "org_role").await,
                platform_role: claim("jwt_claim_platform_role", "platform_role").await,
            },
            jwks_cache_secs: number(vars, "jwks_cache_secs", 300).await,
            jwks_refetch_secs: number(vars, "jwks_refetch_secs", 30).await,
            jwks_stale_secs: number(vars, "jwks_stale_secs", 3_600).await,
            jwks_fetch_timeout_ms: number(vars, "jwks_fetch_timeout_ms", 5_000).await.max(1),
            jwks_max_bytes: number(vars, "jwks_max_bytes", 64 * 1024).await as usize,
            leeway_secs: number(vars, "jwt_leeway_secs", 60).await.min(300),
            allow_http: setting(vars, "jwks_allow_http").await.is_some_and(|v| v == "true"),
        })
    }
}
