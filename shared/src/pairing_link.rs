//! Pairing links: a short-lived URL a manager hands to whoever holds the phone, opening the
//! pairing page (`/pair/{session}?token=…`) for one session and nothing else: its live QR code,
//! its status, a phone pairing code, and the event stream of that session's pairing (`auth.*`,
//! `session.status`, codes included) that the page follows. Unlike a stream token it works for
//! its whole lifetime (the page asks again and again), so it grants far less. Only the token's
//! SHA-256 is stored.

use crate::auth::{Caller, Capability, Credential};
use crate::event::EventFilter;
use crate::redis::{Redis, first};
use crate::secret::{self, sha256_hex};
use crate::store::decode;
use crate::{ApiError, ErrorCode, args, keys};
use serde::{Deserialize, Serialize};

pub const TOKEN_PREFIX: &str = "wgp_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairingLink {
    pub organization_id: String,
    pub session_id: String,
    pub minted_at: i64,
    pub expires_at: i64,
}

impl PairingLink {
    /// Whether the session connected since the link was minted: the link did its job, and
    /// from then on shows the outcome (`/state`) but pairs nothing, so a later logout cannot
    /// hand the number to whoever still holds the link.
    pub fn spent(&self, session: &crate::session::Session) -> bool {
        session.last_connected_at.is_some_and(|at| at >= self.minted_at)
    }
}

/// The 401 of a link that did its job.
pub fn spent_error() -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, "this pairing link was used: the number is attached; ask for a new link to pair again")
}

/// Mints a link's token for the session; returns it with the grant.
pub async fn mint<R: Redis>(r: &R, org: &str, session_id: &str, ttl_secs: u64) -> Result<(String, PairingLink), ApiError> {
    let token = secret::mint(TOKEN_PREFIX);
    let now = crate::time::now_millis();
    let link = PairingLink {
        organization_id: org.to_owned(),
        session_id: session_id.to_owned(),
        minted_at: now,
        expires_at: now + ttl_secs as i64 * 1000,
    };
    let json = serde_json::to_string(&link).map_err(|e| ApiError::internal(e.to_string()))?;
    let hash = sha256_hex(&token);
    // Listed for revocation first: a link that exists is always one `revoke` finds.
    let links = keys::session_pairing_links(org, session_id);
    r.execute("SADD", args![links.as_str(), hash.as_str()]).await?;
    r.execute("EXPIRE", args![links.as_str(), ttl_secs as i64, "GT"]).await?;
    r.execute("EXPIRE", args![links.as_str(), ttl_secs as i64, "NX"]).await?;
    r.execute("SET", args![keys::pairing_link(&hash), json, "EX", ttl_secs as i64]).await?;
    Ok((token, link))
}

/// Revokes every pairing link minted for the session: their pages and calls answer 401 from
/// now on, and the event streams they opened end at their next credential check.
pub async fn revoke<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<(), ApiError> {
    let links = keys::session_pairing_links(org, session_id);
    for hash in r.execute("SMEMBERS", args![links.as_str()]).await?.into_iter().filter_map(crate::redis::Reply::into_string) {
        r.execute("DEL", args![keys::pairing_link(&hash)]).await?;
    }
    r.execute("DEL", args![links.as_str()]).await?;
    Ok(())
}

/// The grant of a token for `session_id`: 401 for a token that is unknown or expired, 404 for
/// a token of another session.
pub async fn open<R: Redis>(r: &R, token: Option<&str>, session_id: &str) -> Result<PairingLink, ApiError> {
    let expired = || ApiError::new(ErrorCode::Unauthorized, "this pairing link is not valid or has expired; ask for a new one");
    let token = token.filter(|t| t.starts_with(TOKEN_PREFIX)).ok_or_else(expired)?;
    let link: PairingLink = decode(first(r, "GET", args![keys::pairing_link(&sha256_hex(token))]).await?)?.ok_or_else(expired)?;
    if link.session_id != session_id {
        return Err(ApiError::session_not_found());
    }
    Ok(link)
}

/// Whether `token` is a pairing link's (and not a stream token).
pub fn is_link(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// The event stream a link opens: the one session its filter names (the link's), only the
/// events of its pairing, none logged before the link was minted, and not once the link is
/// spent. The caller reads, and holds while the link lives.
pub async fn stream<R: Redis>(r: &R, token: &str, filter: &EventFilter) -> Result<(Caller, EventFilter, PairingLink), ApiError> {
    let [session_id] = filter.sessions() else {
        return Err(ApiError::invalid_field("session", "a pairing link streams its one session: name it"));
    };
    let link = open(r, Some(token), session_id).await?;
    if link.spent(&crate::store::get(r, &link.organization_id, &link.session_id).await?) {
        return Err(spent_error());
    }
    let mut pairing = EventFilter::default();
    pairing.session(&link.session_id)?;
    pairing.types("auth.*,session.status")?;
    let caller = Caller {
        user_id: format!("pairing-link:{}", link.session_id),
        organization_id: Some(link.organization_id.clone()),
        capabilities: vec![Capability::Read],
        super_admin: false,
        credential: Credential::PairingLink { token_hash: sha256_hex(token) },
    };
    Ok((caller, pairing, link))
}
