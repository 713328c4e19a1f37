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
}

impl JwtSettings {
    pub async fn load<V: Variables>(vars: &V) -> Option<JwtSettings> {
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
        })
    }
}
