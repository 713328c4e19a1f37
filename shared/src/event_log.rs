//! Reading the organization's durable event log, the Redis Stream `store::update` appends to.
//!
//! A log entry's id (`<ms>-<seq>`) is what the event stream sends as the SSE `id:`, so a client's
//! `Last-Event-ID` names an exact position: reading after it resumes with no gap and no duplicate
//! for as long as the log retains that position ([`Retention`]).

use crate::redis::{Redis, RedisError, Reply};
use crate::{args, keys};

/// One logged event: its position and its JSON, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub event: String,
}

/// How much of an organization's log is kept: an entry goes once it is both older than
/// `max_age_ms` and outside the newest `count`, or once it is outside the newest `max_len`.
/// So the log holds the last `count` events or the last `max_age_ms` of them, whichever is
/// more, but never (beyond a stream node's worth) more than `max_len`: an organization that
/// logs faster than that loses its oldest events early, and a webhook endpoint behind them is
/// told how many it missed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub count: u64,
    pub max_age_ms: u64,
    /// 0: no cap beyond `count` and `max_age_ms`.
    pub max_len: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { count: 10_000, max_age_ms: 24 * 60 * 60 * 1000, max_len: 100_000 }
    }
}

/// A log position (`<ms>-<seq>`, as a client sends it in `Last-Event-ID`) in comparable form.
pub fn position(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The newest entry's id (`0-0` for an empty log): where a subscriber without a
/// `Last-Event-ID` starts, so it sees exactly what is logged after it connected.
pub async fn last_id<R: Redis>(r: &R, org: &str) -> Result<String, RedisError> {
    let replies = r.execute("XREVRANGE", args![keys::org_events(org), "+", "-", "COUNT", 1]).await?;
    Ok(replies.into_iter().next().and_then(Reply::into_string).unwrap_or_else(|| "0-0".to_owned()))
}

/// The oldest entry still retained, if any.
pub async fn first_id<R: Redis>(r: &R, org: &str) -> Result<Option<String>, RedisError> {
    let replies = r.execute("XRANGE", args![keys::org_events(org), "-", "+", "COUNT", 1]).await?;
    Ok(replies.into_iter().next().and_then(Reply::into_string))
}

/// Up to `count` entries after position `after`. With `block_ms`, waits that long for the first
/// one when none is there yet (an empty result means the wait ran out).
pub async fn read_after<R: Redis>(
    r: &R,
    org: &str,
    after: &str,
    count: u32,
    block_ms: Option<u64>,
) -> Result<Vec<Entry>, RedisError> {
    let mut argv = args!["COUNT", count as i64];
    if let Some(ms) = block_ms {
        argv.extend(args!["BLOCK", ms as i64]);
    }
    argv.extend(args!["STREAMS", keys::org_events(org), after]);
    parse_read(r.execute("XREAD", argv).await?)
}

/// XREAD's reply, flattened as `spin:redis` flattens it: the stream's key, then per entry its
/// id and its one field/value pair (`event`, JSON). A timed-out wait is a single nil.
fn parse_read(replies: Vec<Reply>) -> Result<Vec<Entry>, RedisError> {
    let mut items = replies.into_iter();
    if matches!(items.next(), None | Some(Reply::Nil)) {
        return Ok(Vec::new());
    }
    let rest: Vec<Reply> = items.collect();
    if rest.len() % 3 != 0 {
        return Err(RedisError(format!("unexpected event log entry shape ({} values)", rest.len())));
    }
    rest.chunks(3)
        .map(|chunk| match (chunk[0].clone().into_string(), chunk[2].clone().into_string()) {
            (Some(id), Some(event)) => Ok(Entry { id, event }),
            _ => Err(RedisError("unreadable event log entry".to_owned())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn entry_ids_are_stream_positions() {
        assert_eq!(position("1732252800000-0"), Some((1732252800000, 0)));
        assert!(position("9-10") < position("10-0"), "numeric, not textual, order");
        for bad in ["", "-", "1732252800000", "abc-1", "1-2-3", "01J9ZX8K2QHV0M3T6R7P4N5W8C"] {
            assert_eq!(position(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_flattened_entries_and_timeouts() {
        assert_eq!(parse_read(vec![Reply::Nil]).unwrap(), vec![]);
        let replies = vec![text("gw:{org:a}:events"), text("1-0"), text("event"), text("{}"), text("2-0"), text("event"), text("[]")];
        let entries = parse_read(replies).unwrap();
        assert_eq!(entries, vec![Entry { id: "1-0".into(), event: "{}".into() }, Entry { id: "2-0".into(), event: "[]".into() }]);
        assert!(parse_read(vec![text("k"), text("1-0")]).is_err());
    }
}
