//! Deployment settings, read from Spin variables (spin.toml `[variables]`, overridable with
//! `SPIN_VARIABLE_<NAME>`). Empty means unset, so a manifest can declare every variable with a
//! harmless default.

/// Where settings come from: Spin's variables in a component, a map natively.
#[allow(async_fn_in_trait)]
pub trait Variables {
    async fn get(&self, name: &str) -> Option<String>;
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

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub redis_url: String,
    pub jwt: Option<JwtSettings>,
    pub max_body_bytes: usize,
}

impl Config {
    pub async fn load<V: Variables>(vars: &V) -> Config {
        let get = async |name: &str| vars.get(name).await.filter(|v| !v.trim().is_empty());
        let number = async |name: &str, default: u64| get(name).await.and_then(|v| v.parse().ok()).unwrap_or(default);
        let claim = async |name: &str, default: &str| get(name).await.unwrap_or_else(|| default.to_owned());

        let jwks = get("jwks").await;
        let jwks_url = get("jwks_url").await;
        let jwt = match (get("jwt_issuer").await, get("jwt_audience").await) {
            (Some(issuer), Some(audience)) if jwks.is_some() || jwks_url.is_some() => Some(JwtSettings {
                issuer,
                audience,
                jwks,
                jwks_url,
                claims: ClaimNames {
                    user: claim("jwt_claim_user", "sub").await,
                    organization: claim("jwt_claim_org", "org_id").await,
                    org_role: claim("jwt_claim_org_role", "org_role").await,
                    platform_role: claim("jwt_claim_platform_role", "platform_role").await,
                },
                jwks_cache_secs: number("jwks_cache_secs", 300).await,
                jwks_refetch_secs: number("jwks_refetch_secs", 30).await,
            }),
            _ => None,
        };
        Config {
            redis_url: get("redis_url").await.unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            jwt,
            max_body_bytes: number("max_body_bytes", 64 * 1024).await as usize,
        }
    }
}
