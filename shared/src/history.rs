//! A session's messages both ways, newest first: `GET …/messages`.
//!
//! Every message stored (accepted for sending, or received) goes into two indexes: the
//! session's and its chat's, sorted sets of message ids with equal scores. Message ids are
//! ULIDs, so lexical order is time order and a page can start after any id, whatever came or
//! went since. Each write also drops the ids older than the retention, as the messages
//! themselves expire then.

use crate::message::{Direction, Message};
use crate::redis::{Redis, Reply, hash_fields};
use crate::{ApiError, args, keys};

/// A Lua function for the scripts that store a message: `index_message(index, chat_index, id,
/// floor, ttl)` adds the id to both indexes, drops the ids below `floor` (the retention's
/// start, see [`floor`]) and keeps both keys as long as the newest message.
macro_rules! index_message_lua {
    () => {
        r"
local function index_message(index, chat_index, id, floor, ttl)
  for _, key in ipairs({index, chat_index}) do
    redis.call('ZADD', key, 0, id)
    redis.call('ZREMRANGEBYLEX', key, '-', '(' .. floor)
    redis.call('PEXPIRE', key, ttl)
  end
end
"
    };
}
pub(crate) use index_message_lua;

/// The first ULID of the retention window ending now (its 10-character time part): ids below
/// it belong to messages already expired.
pub fn floor(now_ms: i64, retention_ms: u64) -> String {
    let start = (now_ms.max(0) as u64).saturating_sub(retention_ms);
    let mut id = ulid::Ulid::from_parts(start, 0).to_string();
    id.truncate(10);
    id
}

/// How many index entries one page looks at, at most: a filter that matches rarely answers a
/// short page with a cursor rather than scanning the whole history in one call.
const SCAN_MAX: i64 = 1_000;

/// One page, newest first, from ARGV[1] (`+` or `(<id>`), of up to ARGV[2] messages of the
/// direction ARGV[3] (`''`: both) in the index KEYS[1]; messages under the key prefix ARGV[4].
/// Answers `{next, id, n, field, value, …}`: `next` is the id to continue after (`''` at the end).
const PAGE: &str = r"
local limit, scan_max = tonumber(ARGV[2]), tonumber(ARGV[5])
local out, found, scanned, start, next = {''}, 0, 0, ARGV[1], ''
while scanned < scan_max do
  local ids = redis.call('ZRANGE', KEYS[1], start, '-', 'BYLEX', 'REV', 'LIMIT', 0, 100)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    if found == limit then
      out[1] = next
      return out
    end
    scanned = scanned + 1
    next = id
    local fields = redis.call('HGETALL', ARGV[4] .. id)
    local doc
    for i = 1, #fields, 2 do
      if fields[i] == 'doc' then doc = fields[i + 1] end
    end
    if doc and (ARGV[3] == '' or cjson.decode(doc)['direction'] == ARGV[3]) then
      found = found + 1
      out[#out + 1] = id
      out[#out + 1] = #fields
      for _, value in ipairs(fields) do out[#out + 1] = value end
    end
    if scanned >= scan_max then
      out[1] = next
      return out
    end
  end
  start = '(' .. next
end
return out";

/// What a page is filtered by.
#[derive(Debug, Default)]
pub struct Filter {
    /// A chat's JID.
    pub chat: Option<String>,
    pub direction: Option<Direction>,
}

/// One page of the session's messages, newest first, after the cursor, and the cursor of the
/// next page when more may follow.
pub async fn page<R: Redis>(
    r: &R,
    org: &str,
    session_id: &str,
    filter: &Filter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<(Vec<Message>, Option<String>), ApiError> {
    let start = match cursor {
        None => "+".to_owned(),
        Some(cursor) => {
            let id = crate::answer::position(cursor)?;
            if !crate::validate::is_safe_id(&id) {
                return Err(ApiError::invalid_field("cursor", "is not a cursor this endpoint returned"));
            }
            format!("({id}")
        }
    };
    let index = match &filter.chat {
        Some(chat) => keys::session_chat_messages(org, session_id, chat),
        None => keys::session_messages(org, session_id),
    };
    let direction = match filter.direction {
        Some(Direction::Inbound) => "inbound",
        Some(Direction::Outbound) => "outbound",
        None => "",
    };
    let reply = r.execute("EVAL", args![PAGE, 1, index, start, limit as i64, direction, keys::message(org, ""), SCAN_MAX]).await?;
    let mut items = reply.into_iter();
    let next = items.next().and_then(Reply::into_string).filter(|n| !n.is_empty());
    let mut messages = Vec::new();
    while let (Some(_id), Some(count)) = (items.next(), items.next()) {
        let count = count.as_int().unwrap_or(0).max(0) as usize;
        messages.push(Message::from_fields(&hash_fields(items.by_ref().take(count)))?);
    }
    Ok((messages, next.map(|id| crate::answer::cursor(&id))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_floor_sorts_between_older_and_newer_ids() {
        let now = 1_764_600_000_000;
        let floor = super::floor(now, 1_000);
        let older = ulid::Ulid::from_parts(now as u64 - 1_001, u128::MAX >> 48).to_string();
        let newer = ulid::Ulid::from_parts(now as u64 - 999, 0).to_string();
        assert!(older < floor && floor < newer, "{older} {floor} {newer}");
    }
}
