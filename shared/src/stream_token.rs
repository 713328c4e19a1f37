//! Stream tokens: browsers' `EventSource` cannot send an Authorization header, so an
//! authenticated caller mints a short-lived, single-use token and puts it in the event stream's
//! URL. Only the event stream accepts it, and it grants no more than its minter held there.
//! Only the token's SHA-256 is stored; its one use deletes it (`GETDEL`), so a URL that leaks
//! into a log or a browser history is already spent.

use crate::auth::{Caller, Capability, Credential};
use crate::redis::{Redis, first};
use crate::secret::{self, sha256_hex};
use crate::store::decode;
use crate::{ApiError, args, keys};
use serde::{Deserialize, Serialize};

pub const TOKEN_PREFIX: &str = "wgs_";

/// What a token lets its bearer do, copied from the caller who minted it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Grant {
    user_id: String,
    organization_id: String,
    capabilities: Vec<Capability>,
    /// The credential that minted the token: the stream it opens holds while that one does.
    minted_by: Credential,
}

/// Mints a token for the caller's organization; returns it with its expiry (Unix ms).
pub async fn mint<R: Redis>(r: &R, caller: &Caller, org: &str, ttl_secs: u64) -> Result<(String, i64), ApiError> {
    let token = secret::mint(TOKEN_PREFIX);
    let grant = Grant {
        user_id: caller.user_id.clone(),
        organization_id: org.to_owned(),
        capabilities: caller.capabilities.clone(),
        minted_by: caller.credential.clone(),
    };
    let json = serde_json::to_string(&grant).map_err(|e| ApiError::internal(e.to_string()))?;
    r.execute("SET", args![keys::stream_token(&sha256_hex(&token)), json, "EX", ttl_secs as i64]).await?;
    Ok((token, crate::time::now_millis() + ttl_secs as i64 * 1000))
}

/// Spends a token: the caller it stands for, or 401 when it is unknown, expired or used.
pub async fn redeem<R: Redis>(r: &R, token: &str) -> Result<Caller, ApiError> {
    let spent = first(r, "GETDEL", args![keys::stream_token(&sha256_hex(token))]).await?;
    let grant: Grant = decode(spent)?
        .ok_or_else(|| ApiError::unauthorized("the stream token is unknown, expired or already used"))?;
    Ok(Caller {
        user_id: grant.user_id,
        organization_id: Some(grant.organization_id),
        capabilities: grant.capabilities,
        super_admin: false,
        credential: Credential::StreamToken { minted_by: Box::new(grant.minted_by) },
    })
}
