//! The one door to Redis: a single `execute` call with Spin's `spin:redis` semantics.
//!
//! Spin's interface flattens array replies into one list of scalars; the native adapter does the
//! same, so shared code sees identical replies under Spin, under the embedded host and natively.
//! Multi-key atomic updates go through `EVAL`, which is one command on every backend.

use crate::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Bytes(Vec<u8>),
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Bytes(s.into_bytes())
    }
}

impl From<&String> for Arg {
    fn from(s: &String) -> Self {
        Arg::Bytes(s.as_bytes().to_vec())
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

/// One scalar of a (flattened) reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Nil,
    Status(String),
    Int(i64),
    Bytes(Vec<u8>),
}

impl Reply {
    pub fn into_string(self) -> Option<String> {
        match self {
            Reply::Bytes(b) => String::from_utf8(b).ok(),
            Reply::Status(s) => Some(s),
            Reply::Int(i) => Some(i.to_string()),
            Reply::Nil => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Why a Redis call failed. Callers answer every variant with 503 `unavailable`: from the
/// client's side a Redis that refuses or garbles a command is a Redis it cannot use.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisError(pub String);

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}

impl std::error::Error for RedisError {}

impl From<RedisError> for ApiError {
    fn from(_: RedisError) -> Self {
        ApiError::unavailable()
    }
}

#[allow(async_fn_in_trait)]
pub trait Redis {
    async fn execute(&self, command: &str, args: Vec<Arg>) -> Result<Vec<Reply>, RedisError>;
}

/// Builds an argument list from mixed strings and integers: `args!["key", 5]`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($crate::redis::Arg::from($a)),*] };
}

/// The first scalar of a reply, `Nil` for an empty one.
pub async fn first<R: Redis>(r: &R, command: &str, args: Vec<Arg>) -> Result<Reply, RedisError> {
    Ok(r.execute(command, args).await?.into_iter().next().unwrap_or(Reply::Nil))
}

pub async fn get_string<R: Redis>(r: &R, key: &str) -> Result<Option<String>, RedisError> {
    Ok(first(r, "GET", args![key]).await?.into_string())
}

/// A hash as `HGETALL` flattens it (`name, value, …`), as a map.
pub fn hash_fields(items: impl IntoIterator<Item = Reply>) -> std::collections::HashMap<String, String> {
    let mut items = items.into_iter().map(Reply::into_string);
    let mut fields = std::collections::HashMap::new();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        if let (Some(name), Some(value)) = (name, value) {
            fields.insert(name, value);
        }
    }
    fields
}

#[cfg(feature = "native")]
pub mod native {
    //! [`Redis`] over the `redis` crate, flattening replies exactly as Spin's host does.

    use super::{Arg, Redis, RedisError, Reply};
    use redis::Value;

    pub fn command(name: &str, args: Vec<Arg>) -> redis::Cmd {
        let mut cmd = redis::cmd(name);
        for arg in args {
            match arg {
                Arg::Int(i) => cmd.arg(i),
                Arg::Bytes(b) => cmd.arg(b),
            };
        }
        cmd
    }

    /// Flattens a reply the way `spin:redis` does: arrays and sets are spliced in order,
    /// doubles and big numbers become their text, maps are refused.
    pub fn flatten(value: Value) -> Result<Vec<Reply>, RedisError> {
        fn push(out: &mut Vec<Reply>, value: Value) -> Result<(), RedisError> {
            match value {
                Value::Nil => out.push(Reply::Nil),
                Value::Int(i) => out.push(Reply::Int(i)),
                Value::BulkString(b) => out.push(Reply::Bytes(b)),
                Value::SimpleString(s) => out.push(Reply::Status(s)),
                Value::Okay => out.push(Reply::Status("OK".into())),
                Value::Array(items) | Value::Set(items) => {
                    for item in items {
                        push(out, item)?;
                    }
                }
                Value::Double(d) => out.push(Reply::Bytes(d.to_string().into_bytes())),
                Value::Boolean(b) => out.push(Reply::Int(b as i64)),
                Value::VerbatimString { text, .. } => out.push(Reply::Bytes(text.into_bytes())),
                Value::BigNumber(n) => out.push(Reply::Bytes(n.to_string().into_bytes())),
                Value::ServerError(e) => return Err(RedisError(format!("{e:?}"))),
                other => return Err(RedisError(format!("unsupported reply {other:?}"))),
            }
            Ok(())
        }
        let mut out = Vec::new();
        push(&mut out, value)?;
        Ok(out)
    }

    async fn query(mut conn: impl redis::aio::ConnectionLike, name: &str, args: Vec<Arg>) -> Result<Vec<Reply>, RedisError> {
        let value: Value = command(name, args).query_async(&mut conn).await.map_err(|e| RedisError(e.to_string()))?;
        flatten(value)
    }

    impl Redis for redis::aio::ConnectionManager {
        async fn execute(&self, name: &str, args: Vec<Arg>) -> Result<Vec<Reply>, RedisError> {
            query(self.clone(), name, args).await
        }
    }

    /// For a connection of one's own, where a blocking command stalls nobody else.
    impl Redis for redis::aio::MultiplexedConnection {
        async fn execute(&self, name: &str, args: Vec<Arg>) -> Result<Vec<Reply>, RedisError> {
            query(self.clone(), name, args).await
        }
    }

    /// A connection manager that fails fast while Redis is down (so callers can answer 503
    /// at once) and reconnects by itself when it returns.
    pub async fn connect(url: &str) -> Result<redis::aio::ConnectionManager, RedisError> {
        use std::time::Duration;
        let client = redis::Client::open(url).map_err(|e| RedisError(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(1)
            .set_max_delay(200);
        redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| RedisError(e.to_string()))
    }
}
