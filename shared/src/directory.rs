//! A session's directory: the contacts the daemon keeps from WhatsApp's contact and push-name
//! updates, and the groups a backfill fetched. Each kind is a hash (JID → JSON) beside a sorted
//! set of its JIDs with equal scores, so pages follow lexical JID order and a cursor (the last
//! JID of a page) stays valid while entries come and go.

use crate::redis::{Arg, Redis, Reply};
use crate::store::{decode, encode};
use crate::{ApiError, args, keys};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Contacts,
    Groups,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Contacts => "contacts",
            Kind::Groups => "groups",
        }
    }
}

/// What is known of one contact; fields WhatsApp has not told yet are `null`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub jid: String,
    pub phone_number: Option<String>,
    /// The name in the phone's address book.
    pub name: Option<String>,
    /// The name the contact chose for themselves.
    pub push_name: Option<String>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Superadmin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub jid: String,
    pub phone_number: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub jid: String,
    pub subject: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    /// Unix milliseconds, when WhatsApp tells.
    pub created_at: Option<i64>,
    pub size: u32,
    pub participants: Vec<Participant>,
    pub updated_at: i64,
}

/// Writes documents (ARGV: JID, JSON pairs after the merge flag in ARGV[1]). Merging keeps what
/// a document already says where the new one says `null`: a push-name update must not erase the
/// address-book name. Nothing is written once the session's row (KEYS[3]) is gone: a late update
/// must not recreate what a delete removed.
const PUT: &str = r"
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
for i = 2, #ARGV, 2 do
  local doc = ARGV[i + 1]
  local old = ARGV[1] == '1' and redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local merged = cjson.decode(old)
    for k, v in pairs(cjson.decode(doc)) do
      if v ~= cjson.null then merged[k] = v end
    end
    doc = cjson.encode(merged)
  end
  redis.call('HSET', KEYS[1], ARGV[i], doc)
  redis.call('ZADD', KEYS[2], 0, ARGV[i])
end
return 1";

/// One page: up to ARGV[2] JIDs from ARGV[1] on (lexical), each followed by its document.
const PAGE: &str = r"
local jids = redis.call('ZRANGE', KEYS[2], ARGV[1], '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, jid in ipairs(jids) do
  out[#out + 1] = jid
  out[#out + 1] = redis.call('HGET', KEYS[1], jid)
end
return out";

/// Drops every entry whose JID is not in ARGV.
const RETAIN: &str = r"
local keep = {}
for _, jid in ipairs(ARGV) do keep[jid] = true end
local gone = 0
for _, jid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not keep[jid] then
    redis.call('ZREM', KEYS[2], jid)
    redis.call('HDEL', KEYS[1], jid)
    gone = gone + 1
  end
end
return gone";

fn keys_of(org: &str, session_id: &str, kind: Kind) -> [String; 2] {
    [keys::session_directory(org, session_id, kind.name()), keys::session_directory_index(org, session_id, kind.name())]
}

/// Every key of the session's directory, for deleting it with the session.
pub fn all_keys(org: &str, session_id: &str) -> Vec<String> {
    [Kind::Contacts, Kind::Groups].into_iter().flat_map(|kind| keys_of(org, session_id, kind)).collect()
}

/// Forgets the session's contacts and groups (its number was unlinked).
pub async fn clear<R: Redis>(r: &R, org: &str, session_id: &str) -> Result<(), ApiError> {
    let keys: Vec<Arg> = all_keys(org, session_id).into_iter().map(Arg::from).collect();
    r.execute("DEL", keys).await?;
    Ok(())
}

/// Writes `docs` under their JIDs, merged into what is stored (`merge`) or replacing it.
async fn put<R: Redis, T: Serialize>(
    r: &R,
    org: &str,
    session_id: &str,
    kind: Kind,
    merge: bool,
    docs: &[T],
    jid: impl Fn(&T) -> &str,
) -> Result<(), ApiError> {
    if docs.is_empty() {
        return Ok(());
    }
    let [data, index] = keys_of(org, session_id, kind);
    let mut argv: Vec<Arg> = args![PUT, 3, data, index, keys::session(org, session_id), if merge { "1" } else { "0" }];
    for doc in docs {
        argv.extend(args![jid(doc), encode(doc)?]);
    }
    r.execute("EVAL", argv).await?;
    Ok(())
}

/// Records contact updates, merged into what is known of each contact.
pub async fn update_contacts<R: Redis>(r: &R, org: &str, session_id: &str, contacts: &[Contact]) -> Result<(), ApiError> {
    put(r, org, session_id, Kind::Contacts, true, contacts, |c| &c.jid).await
}

/// Stores groups as fetched, replacing what was stored for each.
pub async fn put_groups<R: Redis>(r: &R, org: &str, session_id: &str, groups: &[Group]) -> Result<(), ApiError> {
    put(r, org, session_id, Kind::Groups, false, groups, |g| &g.jid).await
}

/// Forgets the groups not in `jids` (the number left them); returns how many went.
pub async fn retain_groups<R: Redis>(r: &R, org: &str, session_id: &str, jids: &[String]) -> Result<i64, ApiError> {
    let [data, index] = keys_of(org, session_id, Kind::Groups);
    let mut argv: Vec<Arg> = args![RETAIN, 2, data, index];
    argv.extend(jids.iter().map(Arg::from));
    Ok(crate::redis::first(r, "EVAL", argv).await?.as_int().unwrap_or(0))
}

pub async fn count<R: Redis>(r: &R, org: &str, session_id: &str, kind: Kind) -> Result<u64, ApiError> {
    let [_, index] = keys_of(org, session_id, kind);
    Ok(crate::redis::first(r, "ZCARD", args![index]).await?.as_int().unwrap_or(0) as u64)
}

/// One page of the kind's documents (JSON as stored) after the cursor, and the next cursor
/// when more may follow.
pub async fn page<R: Redis>(
    r: &R,
    org: &str,
    session_id: &str,
    kind: Kind,
    cursor: Option<&str>,
    limit: u32,
) -> Result<(Vec<serde_json::Value>, Option<String>), ApiError> {
    let start = match cursor {
        None => "-".to_owned(),
        Some(cursor) => format!("({}", crate::answer::position(cursor)?),
    };
    let [data, index] = keys_of(org, session_id, kind);
    // One more than asked, to know whether another page follows.
    let replies = r.execute("EVAL", args![PAGE, 2, data, index, start, limit as i64 + 1]).await?;
    let mut rows: Vec<(String, Reply)> = Vec::new();
    let mut replies = replies.into_iter();
    while let (Some(jid), Some(doc)) = (replies.next(), replies.next()) {
        rows.push((jid.into_string().unwrap_or_default(), doc));
    }
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|(jid, _)| crate::answer::cursor(jid))).flatten();
    let mut docs = Vec::with_capacity(rows.len());
    for (_, doc) in rows {
        // A JID whose document is gone (removed between the two reads) is skipped.
        docs.extend(decode::<serde_json::Value>(doc)?);
    }
    Ok((docs, next))
}
