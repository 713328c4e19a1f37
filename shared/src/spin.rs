//! Glue between spin-sdk components and the rest of this crate: Redis, variables and outbound
//! HTTP through Spin's host interfaces, and the envelope on every response.
//!
//! A function's handler is `respond(route(req).await)`: route parses, [`Context`] opens Redis
//! and authenticates, the function applies, and [`respond`] turns any outcome into HTTP.

use crate::answer::Answer;
use crate::auth::{self, Caller, Fetch};
use crate::command::CommandResult;
use crate::lifecycle;
use std::time::Duration;
use crate::config::{self, Variables};
use crate::redis::{Arg, Redis, RedisError, Reply};
use crate::{ApiError, ErrorCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use spin_sdk::http::Request;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

pub type Response = http::Response<Full<Bytes>>;

impl Redis for Connection {
    async fn execute(&self, command: &str, args: Vec<Arg>) -> Result<Vec<Reply>, RedisError> {
        let args = args.into_iter().map(|a| match a {
            Arg::Int(i) => RedisParameter::Int64(i),
            Arg::Bytes(b) => RedisParameter::Binary(b),
        });
        let results = Connection::execute(self, command, args).await.map_err(|e| RedisError(e.to_string()))?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                RedisResult::Nil => Reply::Nil,
                RedisResult::Status(s) => Reply::Status(s),
                RedisResult::Int64(i) => Reply::Int(i),
                RedisResult::Binary(b) => Reply::Bytes(b),
            })
            .collect())
    }
}

/// Spin's variables (spin.toml `[variables]`), for the `config` readers.
pub struct SpinVariables;

impl Variables for SpinVariables {
    async fn get(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name).await.ok()
    }
}

struct SpinHttp;

impl Fetch for SpinHttp {
    async fn get_text(&self, url: &str, max_bytes: usize, timeout_ms: u64) -> Result<String, String> {
        let fetch = async {
            let response = spin_sdk::http::get(url).await.map_err(|e| format!("{e:?}"))?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Some(chunk) = frame.map_err(|e| format!("{e:?}"))?.data_ref() {
                    if bytes.len() + chunk.len() > max_bytes {
                        return Err(format!("the document exceeds {max_bytes} bytes"));
                    }
                    bytes.extend_from_slice(chunk);
                }
            }
            String::from_utf8(bytes).map_err(|e| e.to_string())
        };
        let timeout = spin_sdk::time::sleep(Duration::from_millis(timeout_ms));
        match futures::future::select(std::pin::pin!(fetch), std::pin::pin!(timeout)).await {
            futures::future::Either::Left((fetched, _)) => fetched,
            futures::future::Either::Right(_) => Err(format!("no answer within {timeout_ms} ms")),
        }
    }
}

/// Per-request state: one Redis connection (the host pools the sockets underneath).
pub struct Context {
    pub redis: Connection,
}

impl Context {
    pub async fn open() -> Result<Context, ApiError> {
        let url = config::redis_url(&SpinVariables).await;
        let redis = Connection::open(&url).await.map_err(|_| ApiError::unavailable())?;
        Ok(Context { redis })
    }

    pub async fn authenticate(&self, req: &Request) -> Result<Caller, ApiError> {
        let authorization = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        auth::authenticate(&self.redis, &SpinHttp, &SpinVariables, authorization).await
    }

    /// The request body, refused with 413 past the configured limit without reading the rest.
    pub async fn body(&self, req: Request) -> Result<Vec<u8>, ApiError> {
        self.body_within(req, config::max_body_bytes(&SpinVariables).await).await
    }

    /// The request body, refused with 413 past `limit` bytes without reading the rest.
    pub async fn body_within(&self, req: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
        let too_large = || {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("request body exceeds {limit} bytes"))
                .with_detail("limit", limit)
        };
        let declared = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = req.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::new(ErrorCode::ValidationError, format!("unreadable body: {e:?}")))?;
            if let Some(chunk) = frame.data_ref() {
                if bytes.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(chunk);
            }
        }
        Ok(bytes)
    }
}

/// The start every endpoint shares: route first (404/405 before authenticating, for anyone),
/// then open Redis and authenticate the caller.
pub async fn accept<E>(
    req: &Request,
    route: impl FnOnce(&http::Method, &str) -> Result<E, ApiError>,
) -> Result<(E, Context, Caller), ApiError> {
    let endpoint = route(req.method(), req.uri().path())?;
    let ctx = Context::open().await?;
    let caller = ctx.authenticate(req).await?;
    Ok((endpoint, ctx, caller))
}

/// Which wait a caller needs: lifecycle commands or a phone pairing code.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    Command,
    PairingCode,
}

impl Context {
    /// Polls for the daemon's answer to a queued command until the configured wait runs out.
    /// Polling keeps Redis connections shareable: a blocking pop would pin one per waiting request.
    pub async fn wait_for_result(&self, org: &str, command_id: &str, wait: Wait) -> Result<Option<CommandResult>, ApiError> {
        let budget = match wait {
            Wait::Command => config::command_wait_ms(&SpinVariables).await,
            Wait::PairingCode => config::pairing_code_wait_ms(&SpinVariables).await,
        };
        const POLL: Duration = Duration::from_millis(20);
        let polls = budget.div_ceil(POLL.as_millis() as u64);
        for _ in 0..=polls {
            if let Some(result) = lifecycle::result(&self.redis, org, command_id).await? {
                return Ok(Some(result));
            }
            spin_sdk::time::sleep(POLL).await;
        }
        Ok(None)
    }
}

/// A file, 200: never sniffed as another type, never run as a page, kept by private caches only.
fn file(content_type: String, body: Vec<u8>, max_age_secs: u32) -> Response {
    let cache = if max_age_secs == 0 { "no-store".to_owned() } else { format!("private, max-age={max_age_secs}") };
    http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox")
        .header(http::header::CACHE_CONTROL, cache)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

/// One of the gateway's own pages, 200.
fn page(html: &'static str) -> Response {
    const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CONTENT_SECURITY_POLICY, POLICY)
        .header(http::header::REFERRER_POLICY, "no-referrer")
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from_static(html.as_bytes())))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

/// Turns an endpoint's outcome into the HTTP response; errors always travel in the envelope.
pub fn respond(outcome: Result<Answer, ApiError>) -> Response {
    let (status, body, allow, retry_after) = match outcome {
        Ok(Answer::Json(status, body)) => (status, Some(body), None, None),
        Ok(Answer::NoContent) => (204, None, None, None),
        Ok(Answer::File { content_type, body, max_age_secs }) => return file(content_type, body, max_age_secs),
        Ok(Answer::Page(html)) => return page(html),
        Err(error) => {
            let allow = error.details.get("allowed").filter(|_| error.code == ErrorCode::MethodNotAllowed).map(|a| {
                a.as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            });
            (error.status(), Some(serde_json::to_vec(&error.to_json()).unwrap_or_default()), allow, error.retry_after())
        }
    };
    let mut builder = http::Response::builder().status(status).header(http::header::CACHE_CONTROL, "no-store");
    if let Some(allow) = allow {
        builder = builder.header(http::header::ALLOW, allow);
    }
    if let Some(seconds) = retry_after {
        builder = builder.header(http::header::RETRY_AFTER, seconds);
    }
    let body = match body {
        Some(json) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(json)
        }
        None => Bytes::new(),
    };
    // A declared length, not chunks: an error answered before the request body was read (a
    // 413) may see the connection closed behind it, and a client must still read it whole.
    if status != 204 {
        builder = builder.header(http::header::CONTENT_LENGTH, body.len());
    }
    builder.body(Full::new(body)).unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}
