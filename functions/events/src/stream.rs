//! `GET /api/v1/events`: the caller's organization's events as Server-Sent Events.
//!
//! - Each event goes out as `id: <log position>`, `event: <type>`, `data: <event JSON>`. The
//!   position is the event's entry in the organization's durable log, so a reconnecting client's
//!   `Last-Event-ID` (or `?lastEventId=`, for a client that mints a new stream token to
//!   reconnect) resumes right after the last event it saw: no gap, no duplicate.
//! - Without one, the stream starts at the log's current end: exactly what happens next.
//! - Filters: `?session=<id>` (repeatable) and `?types=auth.*,session.status`.
//! - Waiting is a blocking read of the log, so an event goes out as soon as it is logged; an
//!   idle stream sends a keep-alive comment every `event_keepalive_ms`.
//! - Credentials: the Authorization header, or `?token=` holding a stream token or a pairing
//!   link's token (and nothing else: an api-key or login JWT is never accepted from a URL). A
//!   pairing link streams only its session's pairing events (`auth.*`, `session.status`).
//! - Bounds: a stream holds a slot ([`shared::slots`]) capped per caller, organization
//!   and deployment (429 past a cap); it ends after `event_stream_max_secs`, and as soon as a
//!   periodic check finds its credential no longer holds (a revoked api-key, an expired login
//!   token, or the same for a stream token's minter).
//! - A caller without `manage` sees `auth.qr` and `auth.pairing_code` without their codes.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, Stream};
use http_body_util::StreamBody;
use serde::Deserialize;
use shared::auth::{self, Caller, Capability};
use shared::event::{EventFilter, redact_pairing_secret};
use shared::event_log::{self, Entry};
use shared::spin::{Context, SpinVariables};
use shared::slots::Slot;
use shared::{ApiError, config, pairing_link, stream_token, validate};
use spin_sdk::http::Request;
use std::borrow::Cow;
use std::convert::Infallible;
use std::time::{Duration, Instant};

type Frame = Result<http_body::Frame<Bytes>, Infallible>;
pub type Response = http::Response<StreamBody<std::pin::Pin<Box<dyn Stream<Item = Frame>>>>>;

/// Entries read from the log per round trip.
const BATCH: u32 = 100;

/// What the query string asks for.
#[derive(Default)]
struct Query {
    filter: EventFilter,
    token: Option<String>,
    last_event_id: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut parsed = Query::default();
        for (name, value) in validate::query_params(query, &["session", "types", "token", "lastEventId"])? {
            match name.as_str() {
                "session" => parsed.filter.session(&value)?,
                "types" => parsed.filter.types(&value)?,
                "token" => parsed.token = Some(value),
                _ => parsed.last_event_id = Some(value),
            }
        }
        Ok(parsed)
    }
}

pub async fn open(req: &Request, ctx: Context) -> Result<Response, ApiError> {
    let mut query = Query::parse(req.uri().query())?;
    // A pairing page's stream shows its session's codes, which other readers see redacted.
    let mut pairing_page: Option<pairing_link::PairingLink> = None;
    let caller = match &query.token {
        Some(token) if pairing_link::is_link(token) => {
            let (caller, filter, link) = pairing_link::stream(&ctx.redis, token, &query.filter).await?;
            (query.filter, pairing_page) = (filter, Some(link));
            caller
        }
        Some(token) => stream_token::redeem(&ctx.redis, token).await?,
        None => ctx.authenticate(req).await?,
    };
    let org = caller.org_with_any(&[Capability::Read, Capability::Manage])?.to_owned();
    let keepalive = Duration::from_millis(config::event_keepalive_ms(&SpinVariables).await);

    // `?lastEventId=` must be a position even where the header (which wins) is present.
    if let Some(id) = query.last_event_id.as_deref().filter(|id| !id.trim().is_empty()) {
        if event_log::position(id.trim()).is_none() {
            return Err(ApiError::invalid_field("lastEventId", "must be an event id this stream sent"));
        }
    }
    let header = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut resume = header.or(query.last_event_id).filter(|id| !id.trim().is_empty());
    // A pairing page sees nothing logged before its link existed (earlier codes, numbers).
    if let Some(link) = &pairing_page {
        let minted = (link.minted_at.max(1) as u64 - 1, u64::MAX);
        if resume.as_deref().and_then(event_log::position).is_none_or(|p| p < minted) {
            resume = Some(format!("{}-{}", minted.0, minted.1));
        }
    }
    let mut preface = format!("retry: {}\n\n", config::event_retry_ms(&SpinVariables).await);
    let position = match resume {
        Some(id) => {
            let id = id.trim().to_owned();
            let Some(resumed) = event_log::position(&id) else {
                return Err(ApiError::invalid_field("Last-Event-ID", "must be an event id this stream sent"));
            };
            let oldest = event_log::first_id(&ctx.redis, &org).await?;
            if let Some(oldest) = oldest.filter(|o| event_log::position(o).is_some_and(|o| o > resumed)) {
                preface.push_str(&format!(": events before {oldest} are no longer retained; some were missed\n\n"));
            }
            id
        }
        None => event_log::last_id(&ctx.redis, &org).await?,
    };

    // The slot outlives two keep-alive intervals, in which the stream renews it at least once.
    let slot_ttl = keepalive * 2 + Duration::from_secs(5);
    let limits = config::stream_limits(&SpinVariables).await;
    let slot = Slot::stream(&ctx.redis, &org, &caller.user_id, limits, slot_ttl.as_millis() as u64).await?;
    let now = Instant::now();
    let subscription = Subscription {
        ctx,
        org,
        filter: query.filter,
        position,
        keepalive,
        last_write: now,
        redact: pairing_page.is_none() && !caller.capabilities.contains(&Capability::Manage),
        caller,
        slot,
        renewed: now,
        recheck: Duration::from_secs(config::event_recheck_secs(&SpinVariables).await),
        checked: now,
        ends: now + Duration::from_secs(config::event_stream_max_secs(&SpinVariables).await).min(match &pairing_page {
            Some(link) => Duration::from_millis((link.expires_at - shared::time::now_millis()).max(0) as u64),
            None => Duration::MAX,
        }),
        ended: false,
        ends_when_connected: pairing_page.is_some(),
    };
    let first = stream::once(async move { Ok(http_body::Frame::data(Bytes::from(preface))) });
    let rest = stream::unfold(subscription, |mut subscription| async move {
        let chunk = subscription.next_chunk().await?;
        Some((Ok(http_body::Frame::data(chunk)), subscription))
    });
    let body: std::pin::Pin<Box<dyn Stream<Item = Frame>>> = Box::pin(first.chain(rest));
    http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-store")
        // Reverse proxies (nginx) must pass events through as they come, not buffer them.
        .header("x-accel-buffering", "no")
        .body(StreamBody::new(body))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// One client's place in its organization's log.
struct Subscription {
    ctx: Context,
    org: String,
    filter: EventFilter,
    position: String,
    keepalive: Duration,
    last_write: Instant,
    /// The caller lacks `manage`: pairing codes are removed.
    redact: bool,
    caller: Caller,
    slot: Slot,
    renewed: Instant,
    /// How often the credential is checked again, and when it last was.
    recheck: Duration,
    checked: Instant,
    /// When the stream ends at the latest.
    ends: Instant,
    ended: bool,
    /// A pairing page's stream: once it has shown its session connected, the link is spent and
    /// the stream ends at once, not at the next credential check.
    ends_when_connected: bool,
}

impl Subscription {
    /// The next bytes to send: events the filter admits, or a keep-alive once the stream has
    /// been quiet for the interval. `None` ends the stream (its time is up, its credential no
    /// longer holds, or Redis failed; the client resumes with `Last-Event-ID`).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(farewell) = self.end_reason().await {
                self.ended = true;
                let _ = self.slot.release(&self.ctx.redis).await;
                return Some(Bytes::from(format!(": {farewell}\n\n")));
            }
            if self.renewed.elapsed() >= self.keepalive {
                self.slot.renew(&self.ctx.redis).await.ok()?;
                self.renewed = Instant::now();
            }
            let quiet_for = self.last_write.elapsed();
            if quiet_for >= self.keepalive {
                return Some(self.wrote(": keep-alive\n\n".to_owned()));
            }
            let until_check = self.recheck.saturating_sub(self.checked.elapsed());
            let until_end = self.ends.saturating_duration_since(Instant::now());
            let wait_ms = (self.keepalive - quiet_for).min(until_check).min(until_end).as_millis().max(1) as u64;
            let entries = event_log::read_after(&self.ctx.redis, &self.org, &self.position, BATCH, Some(wait_ms)).await.ok()?;
            let Some(last) = entries.last() else { continue };
            self.position = last.id.clone();
            let mut frames = String::new();
            for entry in &entries {
                let Some(head) = Head::of(entry, &self.filter) else { continue };
                if self.ends_when_connected && head.kind == "session.status" && announces_working(&entry.event) {
                    self.ends = Instant::now();
                }
                frames.push_str(&self.frame(entry, &head));
            }
            if !frames.is_empty() {
                return Some(self.wrote(frames));
            }
        }
    }

    /// Why the stream must end now, if it must.
    async fn end_reason(&mut self) -> Option<&'static str> {
        if Instant::now() >= self.ends {
            return Some(if self.ends_when_connected {
                "the session is connected: this pairing link's stream ended"
            } else {
                "this stream reached its maximum lifetime; reconnect with Last-Event-ID"
            });
        }
        if self.checked.elapsed() >= self.recheck {
            self.checked = Instant::now();
            if !auth::still_valid(&self.ctx.redis, &self.caller).await.unwrap_or(true) {
                return Some("the stream's credential no longer holds; stream ended");
            }
        }
        None
    }

    fn wrote(&mut self, text: String) -> Bytes {
        self.last_write = Instant::now();
        Bytes::from(text)
    }

    /// The entry as an SSE event.
    fn frame(&self, entry: &Entry, head: &Head) -> String {
        let event = if self.redact { redact_pairing_secret(&head.kind, &entry.event) } else { Cow::Borrowed(entry.event.as_str()) };
        let data: String = event.lines().map(|line| format!("data: {line}\n")).collect();
        format!("id: {}\nevent: {}\n{data}\n", entry.id, head.kind)
    }
}

/// What a stream reads of every logged event: its type and session, for the filter.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    session_id: Cow<'a, str>,
}

impl<'a> Head<'a> {
    /// The entry's head, if the subscriber wants the entry.
    fn of(entry: &'a Entry, filter: &EventFilter) -> Option<Head<'a>> {
        let head: Head = serde_json::from_str(&entry.event).ok()?;
        filter.admits(&head.kind, &head.session_id).then_some(head)
    }
}

/// Whether a `session.status` event says its session is now connected (`working`). Read only
/// on a pairing page's stream, and only for that type.
fn announces_working(event: &str) -> bool {
    #[derive(Deserialize)]
    struct Announced {
        data: serde_json::Value,
    }
    serde_json::from_str::<Announced>(event).is_ok_and(|e| e.data["status"] == "working")
}
