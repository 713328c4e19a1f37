//! Api-keys: long random secrets for scripts and services. Only a SHA-256 of a key is stored
//! (see [`crate::secret`]); a key is shown once, when it is created.

use crate::auth::Capability;
use crate::redis::{Redis, RedisError, Reply};
use crate::{args, keys};
use crate::secret::sha256_hex;
use serde::{Deserialize, Serialize};

pub const KEY_PREFIX: &str = "wgk_";

/// A fresh api-key, shown to its owner once.
pub fn mint() -> String {
    crate::secret::mint(KEY_PREFIX)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRecord {
    pub id: String,
    pub organization_id: String,
    pub permissions: Vec<Capability>,
    pub label: Option<String>,
    pub created_at: i64,
    pub revoked: bool,
}

/// Looks a presented key up by its hash.
pub async fn find<R: Redis>(r: &R, key: &str) -> Result<Option<ApiKeyRecord>, RedisError> {
    let json = crate::redis::get_string(r, &keys::api_key(&sha256_hex(key))).await?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

/// Stores a new key's record; returns the record. The caller mints the secret ([`mint`]).
pub async fn create<R: Redis>(
    r: &R,
    secret: &str,
    organization_id: &str,
    permissions: Vec<Capability>,
    label: Option<String>,
) -> Result<ApiKeyRecord, RedisError> {
    let record = ApiKeyRecord {
        id: ulid::Ulid::new().to_string(),
        organization_id: organization_id.to_owned(),
        permissions,
        label,
        created_at: crate::time::now_millis(),
        revoked: false,
    };
    let hash = sha256_hex(secret);
    let json = serde_json::to_string(&record).map_err(|e| RedisError(e.to_string()))?;
    r.execute("SET", args![keys::api_key(&hash), json]).await?;
    r.execute("HSET", args![keys::org_api_keys(organization_id), &record.id, hash]).await?;
    Ok(record)
}

pub async fn list<R: Redis>(r: &R, organization_id: &str) -> Result<Vec<ApiKeyRecord>, RedisError> {
    let hashes = r.execute("HVALS", args![keys::org_api_keys(organization_id)]).await?;
    let mut records = Vec::new();
    for hash in hashes.into_iter().filter_map(Reply::into_string) {
        if let Some(json) = crate::redis::get_string(r, &keys::api_key(&hash)).await? {
            records.extend(serde_json::from_str::<ApiKeyRecord>(&json).ok());
        }
    }
    records.sort_by_key(|k| k.created_at);
    Ok(records)
}

/// Whether the organization's key `key_id` exists and is not revoked.
pub async fn is_active<R: Redis>(r: &R, organization_id: &str, key_id: &str) -> Result<bool, RedisError> {
    let Some(hash) = crate::redis::first(r, "HGET", args![keys::org_api_keys(organization_id), key_id]).await?.into_string() else {
        return Ok(false);
    };
    let record = crate::redis::get_string(r, &keys::api_key(&hash)).await?.and_then(|j| serde_json::from_str::<ApiKeyRecord>(&j).ok());
    Ok(record.is_some_and(|r| !r.revoked))
}

/// Marks a key revoked (kept, so the audit trail survives); `false` when the organization has no such key.
pub async fn revoke<R: Redis>(r: &R, organization_id: &str, key_id: &str) -> Result<bool, RedisError> {
    let Some(hash) = crate::redis::first(r, "HGET", args![keys::org_api_keys(organization_id), key_id])
        .await?
        .into_string()
    else {
        return Ok(false);
    };
    let key = keys::api_key(&hash);
    let Some(mut record) = crate::redis::get_string(r, &key)
        .await?
        .and_then(|j| serde_json::from_str::<ApiKeyRecord>(&j).ok())
    else {
        return Ok(false);
    };
    record.revoked = true;
    let json = serde_json::to_string(&record).map_err(|e| RedisError(e.to_string()))?;
    r.execute("SET", args![key, json]).await?;
    Ok(true)
}
