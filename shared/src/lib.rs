//! What both halves of the gateway must agree on, written once.
//!
//! The edge functions (wasm32-wasip2) and the native processes (embedded host, connector daemon,
//! xtask) compile this crate. Everything here talks to Redis only through the [`redis::Redis`]
//! trait, so the same code runs over Spin's `spin:redis` interface and over a native client.

pub mod answer;
pub mod apikey;
pub mod auth;
pub mod backfill;
pub mod command;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod egress;
pub mod error;
pub mod event;
pub mod event_log;
pub mod history;
pub mod inbox;
pub mod keys;
pub mod lifecycle;
pub mod media;
pub mod message;
pub mod outbox;
pub mod pairing_link;
pub mod quota;
pub mod rate_limit;
pub mod redis;
pub mod route;
pub mod secret;
pub mod session;
pub mod slots;
pub mod store;
pub mod stream_token;
pub mod time;
pub mod webhook;
pub mod validate;

#[cfg(feature = "native")]
pub mod logging;
#[cfg(feature = "native")]
pub mod shutdown;
#[cfg(feature = "spin")]
pub mod spin;

pub use error::{ApiError, ErrorCode};
