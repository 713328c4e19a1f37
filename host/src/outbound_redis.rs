//! `spin:redis/redis@3.0.0`: components open Redis by address; the host hands out clones of
//! one pooled, multiplexed connection per address, so requests never pay a TCP handshake.
//! Replies are flattened exactly as Spin flattens them (`shared::redis::native::flatten`).
//!
//! A command that blocks the connection it runs on (`XREAD … BLOCK`, `BLPOP`, …) would stall
//! every request multiplexed behind it, so it runs on a connection of the guest's handle alone,
//! opened on first need and closed with the handle: a blocked reader whose client went away
//! releases its socket with the request.

use crate::allowed_hosts::AllowedHosts;
use crate::bindings::spin::redis::redis::{Error, Host, HostConnection, HostConnectionWithStore, RedisParameter, RedisResult};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use shared::redis::{Arg, Redis, Reply};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use wasmtime::component::{Accessor, HasData, Resource, ResourceTable};

/// Connections shared by every request of every component, keyed by address.
#[derive(Default, Clone)]
pub struct RedisPool(Arc<Mutex<HashMap<String, ConnectionManager>>>);

impl RedisPool {
    async fn connection(&self, address: &str) -> Result<ConnectionManager, Error> {
        if let Some(conn) = self.0.lock().unwrap().get(address) {
            return Ok(conn.clone());
        }
        let conn = shared::redis::native::connect(address).await.map_err(|e| Error::Other(e.0))?;
        // Two requests may race to connect; either connection serves, the first one stays.
        Ok(self.0.lock().unwrap().entry(address.to_owned()).or_insert(conn).clone())
    }
}

/// The resource behind a guest's `connection` handle.
#[derive(Clone)]
pub struct RedisConnection {
    pooled: ConnectionManager,
    address: Arc<str>,
    own: Arc<OnceCell<MultiplexedConnection>>,
}

impl RedisConnection {
    async fn own(&self) -> Result<MultiplexedConnection, Error> {
        let open = async || {
            let client = redis::Client::open(&*self.address)?;
            let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(2));
            client.get_multiplexed_async_connection_with_config(&config).await
        };
        self.own.get_or_try_init(open).await.cloned().map_err(|e| Error::Other(e.to_string()))
    }
}

/// Whether the command holds its connection until something happens (or its timeout).
fn blocks(command: &str, args: &[Arg]) -> bool {
    const WAITING: &[&str] = &["BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF"];
    let is = |name: &str| command.eq_ignore_ascii_case(name);
    WAITING.iter().any(|name| is(name))
        || ((is("XREAD") || is("XREADGROUP")) && args.iter().any(|a| matches!(a, Arg::Bytes(b) if b.eq_ignore_ascii_case(b"BLOCK"))))
}

/// What a request's store lends the Redis interface.
pub struct RedisView<'a> {
    pub table: &'a mut ResourceTable,
    pub pool: &'a RedisPool,
    pub allowed: &'a AllowedHosts,
}

pub struct OutboundRedis;

impl HasData for OutboundRedis {
    type Data<'a> = RedisView<'a>;
}

impl Host for RedisView<'_> {}

impl HostConnection for RedisView<'_> {
    fn drop(&mut self, rep: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}


async fn run<T>(
    accessor: &Accessor<T, OutboundRedis>,
    conn: &Resource<RedisConnection>,
    command: &str,
    args: Vec<Arg>,
) -> Result<Vec<Reply>, Error> {
    let conn = accessor.with(|mut view| view.get().table.get(conn).cloned());
    let conn = conn.map_err(|e| Error::Other(e.to_string()))?;
    let replies = if blocks(command, &args) {
        conn.own().await?.execute(command, args).await
    } else {
        conn.pooled.execute(command, args).await
    };
    replies.map_err(|e| Error::Other(e.0))
}

fn single(replies: Vec<Reply>) -> Reply {
    replies.into_iter().next().unwrap_or(Reply::Nil)
}

fn int(reply: Reply) -> Result<i64, Error> {
    reply.as_int().ok_or(Error::TypeError)
}

fn text_args<I: IntoIterator<Item = String>>(head: String, rest: I) -> Vec<Arg> {
    std::iter::once(head).chain(rest).map(Arg::from).collect()
}

impl<T: Send> HostConnectionWithStore<T> for OutboundRedis {
    async fn open(accessor: &Accessor<T, Self>, address: String) -> Result<Resource<RedisConnection>, Error> {
        let (pool, allowed) = accessor.with(|mut view| {
            let view = view.get();
            (view.pool.clone(), view.allowed.allows_url(&address))
        });
        if !allowed {
            tracing::warn!(%address, "redis address not in allowed_outbound_hosts");
            return Err(Error::InvalidAddress);
        }
        let pooled = pool.connection(&address).await?;
        let conn = RedisConnection { pooled, address: address.into(), own: Arc::default() };
        accessor.with(|mut view| view.get().table.push(conn)).map_err(|_| Error::TooManyConnections)
    }

    async fn publish(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, channel: String, payload: Vec<u8>) -> Result<(), Error> {
        run(accessor, &conn, "PUBLISH", vec![Arg::from(channel), Arg::Bytes(payload)]).await.map(drop)
    }

    async fn get(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, key: String) -> Result<Option<Vec<u8>>, Error> {
        match single(run(accessor, &conn, "GET", vec![Arg::from(key)]).await?) {
            Reply::Nil => Ok(None),
            Reply::Bytes(b) => Ok(Some(b)),
            _ => Err(Error::TypeError),
        }
    }

    async fn set(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, key: String, value: Vec<u8>) -> Result<(), Error> {
        run(accessor, &conn, "SET", vec![Arg::from(key), Arg::Bytes(value)]).await.map(drop)
    }

    async fn incr(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, key: String) -> Result<i64, Error> {
        int(single(run(accessor, &conn, "INCR", vec![Arg::from(key)]).await?))
    }

    async fn del(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, Error> {
        let args = keys.into_iter().map(Arg::from).collect();
        Ok(int(single(run(accessor, &conn, "DEL", args).await?))? as u32)
    }

    async fn sadd(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        Ok(int(single(run(accessor, &conn, "SADD", text_args(key, values)).await?))? as u32)
    }

    async fn smembers(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, key: String) -> Result<Vec<String>, Error> {
        let replies = run(accessor, &conn, "SMEMBERS", vec![Arg::from(key)]).await?;
        replies.into_iter().map(|r| r.into_string().ok_or(Error::TypeError)).collect()
    }

    async fn srem(accessor: &Accessor<T, Self>, conn: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        Ok(int(single(run(accessor, &conn, "SREM", text_args(key, values)).await?))? as u32)
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        conn: Resource<RedisConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        let args = arguments
            .into_iter()
            .map(|p| match p {
                RedisParameter::Int64(i) => Arg::Int(i),
                RedisParameter::Binary(b) => Arg::Bytes(b),
            })
            .collect();
        let replies = run(accessor, &conn, &command, args).await?;
        Ok(replies
            .into_iter()
            .map(|r| match r {
                Reply::Nil => RedisResult::Nil,
                Reply::Status(s) => RedisResult::Status(s),
                Reply::Int(i) => RedisResult::Int64(i),
                Reply::Bytes(b) => RedisResult::Binary(b),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_waiting_commands_get_a_connection_of_their_own() {
        let a = |s: &str| Arg::from(s);
        assert!(blocks("XREAD", &[a("COUNT"), Arg::Int(10), a("block"), Arg::Int(5000), a("STREAMS"), a("k"), a("0-0")]));
        assert!(!blocks("XREAD", &[a("COUNT"), Arg::Int(10), a("STREAMS"), a("k"), a("0-0")]));
        assert!(blocks("blpop", &[a("q"), Arg::Int(1)]));
        assert!(!blocks("GET", &[a("BLOCK")]));
    }
}
