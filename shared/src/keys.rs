//! The Redis keyspace: the only place a key is spelled.
//!
//! Keys an organization's requests use together share the hash tag `{org:<id>}`, so they land on
//! one Redis Cluster slot and a Lua script may touch them atomically. Isolation between
//! organizations is structural: a caller's organization is part of every key it can reach, so a
//! session id of another organization simply resolves to a key that does not exist.

const PREFIX: &str = "gw";

/// One session's row (a JSON document).
pub fn session(org: &str, session_id: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session:{session_id}")
}

/// The organization's sessions, scored by creation order, for listing in a stable order.
pub fn org_sessions(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:sessions")
}

/// Counts the organization's session creations: the scores of [`org_sessions`].
pub fn org_session_counter(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:session-counter")
}

/// Session id → organization id, for platform-wide lookups (the daemon, super_admin tools).
pub fn session_owner(session_id: &str) -> String {
    format!("{PREFIX}:session-owner:{session_id}")
}

/// Commands for sessions no gateway holds yet; any daemon may take them.
pub fn unplaced_commands() -> String {
    format!("{PREFIX}:commands:unplaced")
}

/// Commands for the sessions one gateway holds.
pub fn gateway_commands(gateway_id: &str) -> String {
    format!("{PREFIX}:commands:gateway:{gateway_id}")
}

/// An api-key's record, found by the SHA-256 of the key itself: the key is never stored.
pub fn api_key(key_hash: &str) -> String {
    format!("{PREFIX}:apikey:{key_hash}")
}

/// The organization's api-keys: key id → key hash, for listing and revoking by id.
pub fn org_api_keys(org: &str) -> String {
    format!("{PREFIX}:{{org:{org}}}:apikeys")
}

/// The cached JWKS document fetched from one URL.
pub fn jwks_cache(url: &str) -> String {
    format!("{PREFIX}:jwks:{}", crate::apikey::sha256_hex(url))
}

/// Held for a short interval after a JWKS refetch, so unknown `kid`s cannot trigger a fetch storm.
pub fn jwks_refetch_guard(url: &str) -> String {
    format!("{PREFIX}:jwks-refetch:{}", crate::apikey::sha256_hex(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_organizations_keys_share_one_cluster_slot() {
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&session("acme", "01J")), tag(&org_sessions("acme")));
        assert_eq!(tag(&org_sessions("acme")), tag(&org_api_keys("acme")));
        assert_eq!(tag(&org_sessions("acme")), tag(&org_session_counter("acme")));
        assert_ne!(session("acme", "01J"), session("globex", "01J"));
    }
}
