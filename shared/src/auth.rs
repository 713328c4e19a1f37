//! Who is calling, and what may they do.
//!
//! A Bearer token is tried first as a login JWT (it has the JWT shape: three dot-separated
//! parts), verified against the configured JWKS; anything else is looked up as an api-key.
//! The signing algorithm always comes from the key, never from the token, so `alg: none` and
//! algorithm swaps (say HS256 "signed" with an RSA public key) cannot verify.

use crate::config::{JwtSettings, Variables};
use crate::redis::{Redis, first, get_string};
use crate::{ApiError, ErrorCode, apikey, args, keys, validate};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Session lifecycle and pairing.
    Manage,
    Send,
    Read,
}

impl Capability {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "manage" => Some(Capability::Manage),
            "send" => Some(Capability::Send),
            "read" => Some(Capability::Read),
            _ => None,
        }
    }

    /// What an organization role grants (DESIGN.md, "Vocabulary"). Unknown roles grant nothing.
    pub fn for_org_role(role: &str) -> Vec<Capability> {
        match role {
            "owner" | "admin" => vec![Capability::Manage, Capability::Send, Capability::Read],
            "member" => vec![Capability::Send, Capability::Read],
            "viewer" => vec![Capability::Read],
            _ => vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Credential {
    /// A login JWT, valid until `expiresAt` (Unix ms, leeway included).
    #[serde(rename_all = "camelCase")]
    LoginJwt { expires_at: i64 },
    ApiKey { id: String },
    /// A single-use event-stream token ([`crate::stream_token`]), standing for the credential
    /// that minted it: the stream holds only as long as that one does.
    #[serde(rename_all = "camelCase")]
    StreamToken { minted_by: Box<Credential> },
    /// A pairing link ([`crate::pairing_link`]), holding while the link lives.
    #[serde(rename_all = "camelCase")]
    PairingLink { token_hash: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub user_id: String,
    pub organization_id: Option<String>,
    pub capabilities: Vec<Capability>,
    /// The platform role, honoured only from a login JWT.
    pub super_admin: bool,
    pub credential: Credential,
}

impl Caller {
    /// The organization the caller acts in, provided it holds `capability` there.
    pub fn org_with(&self, capability: Capability) -> Result<&str, ApiError> {
        self.org_with_any(&[capability])
    }

    /// The organization the caller acts in, provided it holds one of `capabilities` there.
    pub fn org_with_any(&self, capabilities: &[Capability]) -> Result<&str, ApiError> {
        let org = self
            .organization_id
            .as_deref()
            .ok_or_else(|| ApiError::forbidden("this credential is not scoped to an organization"))?;
        if capabilities.iter().any(|c| self.capabilities.contains(c)) {
            Ok(org)
        } else {
            let needed = match capabilities {
                [one] => serde_json::to_value(one),
                many => serde_json::to_value(many),
            };
            let needed = needed.unwrap_or_default();
            Err(ApiError::forbidden("this credential lacks the capability this endpoint needs")
                .with_detail("capability", needed))
        }
    }
}

/// Outbound HTTP for fetching a JWKS: Spin's `wasi:http` in a component. A fetch gives up
/// after `timeout_ms` and refuses a body over `max_bytes`.
#[allow(async_fn_in_trait)]
pub trait Fetch {
    async fn get_text(&self, url: &str, max_bytes: usize, timeout_ms: u64) -> Result<String, String>;
}

/// Whether the caller's credential still holds: an api-key not revoked, a login JWT not
/// expired, a pairing link not expired; a stream token holds while the credential that minted
/// it does. An open event
/// stream asks this periodically.
pub async fn still_valid<R: Redis>(redis: &R, caller: &Caller) -> Result<bool, ApiError> {
    let credential = match &caller.credential {
        Credential::StreamToken { minted_by } => minted_by.as_ref(),
        other => other,
    };
    match credential {
        Credential::LoginJwt { expires_at } => Ok(crate::time::now_millis() < *expires_at),
        Credential::ApiKey { id } => match &caller.organization_id {
            Some(org) => Ok(apikey::is_active(redis, org, id).await?),
            None => Ok(false),
        },
        Credential::PairingLink { token_hash } => {
            Ok(crate::redis::first(redis, "EXISTS", crate::args![crate::keys::pairing_link(token_hash)]).await?.as_int() == Some(1))
        }
        Credential::StreamToken { .. } => Ok(false),
    }
}

/// `vars` is read only for login JWTs, so api-key requests cost no settings lookups.
pub async fn authenticate<R: Redis, F: Fetch, V: Variables>(
    redis: &R,
    fetch: &F,
    vars: &V,
    authorization: Option<&str>,
) -> Result<Caller, ApiError> {
    let token = bearer_token(authorization)?;
    if token.split('.').count() == 3 {
        verify_login_jwt(redis, fetch, JwtSettings::load(vars).await?.as_ref(), token).await
    } else {
        verify_api_key(redis, token).await
    }
}

fn bearer_token(authorization: Option<&str>) -> Result<&str, ApiError> {
    let header = authorization.ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized("expected Authorization: Bearer <token>"));
    }
    Ok(token)
}

async fn verify_api_key<R: Redis>(redis: &R, token: &str) -> Result<Caller, ApiError> {
    let record = apikey::find(redis, token).await?.ok_or_else(|| ApiError::unauthorized("invalid api-key"))?;
    if record.revoked {
        return Err(ApiError::unauthorized("this api-key has been revoked"));
    }
    Ok(Caller {
        user_id: format!("apikey:{}", record.id),
        organization_id: Some(record.organization_id),
        capabilities: record.permissions,
        super_admin: false,
        credential: Credential::ApiKey { id: record.id },
    })
}

async fn verify_login_jwt<R: Redis, F: Fetch>(
    redis: &R,
    fetch: &F,
    settings: Option<&JwtSettings>,
    token: &str,
) -> Result<Caller, ApiError> {
    let header = decode_header(token).map_err(|_| ApiError::unauthorized("malformed or unsigned login token"))?;
    let settings =
        settings.ok_or_else(|| ApiError::unauthorized("login tokens are not accepted by this deployment"))?;
    let jwk = find_key(redis, fetch, settings, header.kid.as_deref(), header.alg).await?;
    let algorithm = key_algorithm(&jwk)
        .ok_or_else(|| ApiError::unauthorized("the token's signing key is of an unsupported kind"))?;
    if header.alg != algorithm {
        return Err(ApiError::unauthorized("the token's algorithm does not match its signing key"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| ApiError::unauthorized("unusable signing key"))?;

    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = settings.leeway_secs;
    let claims = decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| ApiError::unauthorized(format!("login token rejected: {e}")))?
        .claims;

    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let user_id = text(&settings.claims.user)
        .ok_or_else(|| ApiError::unauthorized("login token has no user claim"))?;
    let organization_id = text(&settings.claims.organization);
    if organization_id.as_deref().is_some_and(|org| !validate::is_safe_id(org)) {
        return Err(ApiError::unauthorized("login token's organization claim is malformed"));
    }
    let role = text(&settings.claims.org_role).unwrap_or_default();
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let expires_at = exp.saturating_add(settings.leeway_secs as i64).saturating_mul(1000);
    Ok(Caller {
        user_id,
        organization_id,
        capabilities: Capability::for_org_role(&role),
        super_admin: text(&settings.claims.platform_role).as_deref() == Some("super_admin"),
        credential: Credential::LoginJwt { expires_at },
    })
}

/// The algorithm a JWK may verify. Symmetric keys are never accepted from a JWKS.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Some(Algorithm::RS256),
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Some(Algorithm::RS384),
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Some(Algorithm::RS512),
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Some(Algorithm::PS256),
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS384)) => Some(Algorithm::PS384),
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS512)) => Some(Algorithm::PS512),
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256)) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES384)) if p.curve == EllipticCurve::P384 => {
            Some(Algorithm::ES384)
        }
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA)) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    }
}

fn select(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
    match kid {
        Some(kid) => set.find(kid).cloned(),
        None => set.keys.iter().find(|k| key_algorithm(k) == Some(alg)).cloned(),
    }
}

fn parse_jwks(json: &str) -> Result<JwkSet, ApiError> {
    serde_json::from_str(json).map_err(|_| ApiError::new(ErrorCode::Unavailable, "the configured JWKS is not valid"))
}

/// A fetched JWKS as cached in Redis: kept `jwks_cache_secs`, then refetched; while refetches
/// fail it keeps serving for `jwks_stale_secs` more, so an issuer's outage does not lock every
/// user out at once.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedJwks {
    fetched_at: i64,
    document: String,
}

/// Finds the token's key: inline JWKS, else the Redis-cached copy of the JWKS URL, else a fetch.
/// A stale copy, or a `kid` the cached set lacks (the issuer rotated keys), refetches at most
/// once per `jwks_refetch_secs`.
async fn find_key<R: Redis, F: Fetch>(
    redis: &R,
    fetch: &F,
    settings: &JwtSettings,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Jwk, ApiError> {
    let unknown = || ApiError::unauthorized("the token's signing key is unknown");
    if let Some(inline) = &settings.jwks {
        return select(&parse_jwks(inline)?, kid, alg).ok_or_else(unknown);
    }
    let Some(url) = &settings.jwks_url else { return Err(unknown()) };
    let cached: Option<CachedJwks> = get_string(redis, &keys::jwks_cache(url)).await?.and_then(|json| serde_json::from_str(&json).ok());
    let Some(cached) = cached else {
        return select(&fetch_jwks(redis, fetch, settings, url).await?, kid, alg).ok_or_else(unknown);
    };
    let set = parse_jwks(&cached.document)?;
    let fresh = crate::time::now_millis() - cached.fetched_at < settings.jwks_cache_secs as i64 * 1000;
    let found = select(&set, kid, alg);
    if fresh && found.is_some() {
        return found.ok_or_else(unknown);
    }
    let guard = first(redis, "SET", args![keys::jwks_refetch_guard(url), "1", "NX", "EX", settings.jwks_refetch_secs.max(1) as i64]).await?;
    if guard == crate::redis::Reply::Nil {
        return found.ok_or_else(unknown);
    }
    match fetch_jwks(redis, fetch, settings, url).await {
        Ok(fetched) => select(&fetched, kid, alg).ok_or_else(unknown),
        // The issuer is unreachable: the cached keys serve until they expire.
        Err(e) => found.ok_or(e),
    }
}

/// Fetches the JWKS (bounded in time and size) and caches it.
async fn fetch_jwks<R: Redis, F: Fetch>(redis: &R, fetch: &F, settings: &JwtSettings, url: &str) -> Result<JwkSet, ApiError> {
    let fetched = fetch
        .get_text(url, settings.jwks_max_bytes, settings.jwks_fetch_timeout_ms)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, "cannot fetch the JWKS to verify login tokens").with_detail("reason", e))?;
    let set = parse_jwks(&fetched)?;
    let cached = CachedJwks { fetched_at: crate::time::now_millis(), document: fetched };
    let json = serde_json::to_string(&cached).map_err(|e| ApiError::internal(e.to_string()))?;
    let keep = settings.jwks_cache_secs.saturating_add(settings.jwks_stale_secs).max(1);
    redis.execute("SET", args![keys::jwks_cache(url), json, "EX", keep as i64]).await?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_capabilities() {
        assert_eq!(Capability::for_org_role("admin").len(), 3);
        assert!(!Capability::for_org_role("member").contains(&Capability::Manage));
        assert_eq!(Capability::for_org_role("viewer"), vec![Capability::Read]);
        assert!(Capability::for_org_role("super_admin").is_empty());
    }

    #[test]
    fn bearer_scheme_is_required() {
        assert!(bearer_token(Some("Bearer abc")).is_ok());
        assert!(bearer_token(Some("bearer abc")).is_ok());
        assert!(bearer_token(Some("Basic abc")).is_err());
        assert!(bearer_token(Some("Bearer ")).is_err());
        assert!(bearer_token(None).is_err());
    }

    #[test]
    fn symmetric_keys_from_a_jwks_are_refused() {
        let set: JwkSet = serde_json::from_str(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#).unwrap();
        assert_eq!(key_algorithm(&set.keys[0]), None);
    }
}
