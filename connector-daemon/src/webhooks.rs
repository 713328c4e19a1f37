//! The webhook worker every daemon runs: queues each endpoint's events from the organization
//! logs (`shared::delivery::poll`) and delivers them, signed the Standard Webhooks way, one at a
//! time per endpoint and session, so each endpoint sees a session's events in order.
//!
//! Events announce themselves on the organizations' pub/sub channels, which wake the worker
//! for that organization at once; every `WEBHOOK_POLL_MS` it also looks at every endpoint, for
//! retries come due and announcements missed. Any number of daemons may run this side by side:
//! the queue's scripts make sure each event is queued once and delivered by one worker at a time.

use crate::daemon::{Daemon, persist};
use futures::StreamExt;
use shared::delivery::{self, Attempt, Limits, Outcome, Settling};
use shared::keys;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use crate::slots::{Slot, Slots};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a claim outlives the delivery's own timeout before another worker may take over.
const CLAIM_MARGIN_MS: u64 = 5_000;

/// Batches one look reads from one endpoint's log before it moves on to the next endpoint (and
/// comes back at once): a replay from the start of a large log cannot hold up the others.
const BATCHES_PER_LOOK: usize = 5;

/// The worker's shared state: the endpoints it knows, what it is delivering (one task per
/// endpoint and session), the slots deliveries take, and the organizations with news.
struct Worker {
    daemon: Arc<Daemon>,
    endpoints: Mutex<Vec<(String, String)>>,
    busy: Mutex<HashSet<(String, String, String)>>,
    slots: DeliverySlots,
    woken: Mutex<HashSet<String>>,
    news: Notify,
}

/// Deliveries at once: `WEBHOOK_CONCURRENCY` in the daemon, at most half of them for one
/// organization and a quarter for one endpoint, so an endpoint that answers slowly holds only
/// its own share and its organization's other endpoints, and every other organization, go on.
/// A delivery takes its endpoint's share, then its organization's, then the daemon's: one
/// waiting for a share holds nothing another organization could use.
struct DeliverySlots {
    /// Shares only: the daemon's total is taken with the organization's share.
    by_endpoint: Slots,
    by_org: Slots,
}

impl DeliverySlots {
    fn new(concurrency: usize) -> DeliverySlots {
        DeliverySlots {
            by_endpoint: Slots::new(tokio::sync::Semaphore::MAX_PERMITS, concurrency / 4),
            by_org: Slots::new(concurrency, concurrency / 2),
        }
    }

    async fn take(&self, org: &str, endpoint: &str) -> (Slot, Slot) {
        let endpoint = self.by_endpoint.take(&format!("{org}/{endpoint}")).await;
        (endpoint, self.by_org.take(org).await)
    }
}

pub async fn run(daemon: Arc<Daemon>) {
    let slots = DeliverySlots::new(daemon.config.webhook_concurrency.max(1));
    let poll_every = Duration::from_millis(daemon.config.webhook_poll_ms.max(10));
    let worker = Arc::new(Worker { daemon, endpoints: Mutex::default(), busy: Mutex::default(), slots, woken: Mutex::default(), news: Notify::new() });
    tokio::spawn(listen(worker.clone()));
    // Deadlines, not pauses: wake-ups from busy organizations must not postpone the look at
    // every endpoint, nor a retry that comes due.
    let mut next_full_look = Instant::now();
    let mut next_due: Option<Instant> = None;
    loop {
        let deadline = next_due.map_or(next_full_look, |due| due.min(next_full_look));
        tokio::select! {
            _ = worker.news.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if worker.daemon.is_stopping() {
            return;
        }
        let now = Instant::now();
        let full = now >= next_full_look || next_due.is_some_and(|due| now >= due);
        let orgs = std::mem::take(&mut *worker.woken.lock().unwrap());
        if full {
            next_full_look = now + poll_every;
        }
        let found = worker.look(if full { None } else { Some(&orgs) }).await.map(|wait| now + wait);
        next_due = if full { found } else { next_due.into_iter().chain(found).min() };
    }
}

impl Worker {
    /// Something happened for `org`: look at its endpoints soon.
    fn wake(&self, org: &str) {
        self.woken.lock().unwrap().insert(org.to_owned());
        self.news.notify_one();
    }

    /// The endpoints to look at: re-read on every full look (`orgs` is `None`) and whenever
    /// their number changed, so a new endpoint's first events need no full look.
    async fn endpoints(&self, orgs: Option<&HashSet<String>>) -> Result<Vec<(String, String)>, shared::redis::RedisError> {
        let known = self.endpoints.lock().unwrap().len();
        if orgs.is_some() && delivery::endpoint_count(&self.daemon.redis).await? == known as u64 {
            let endpoints = self.endpoints.lock().unwrap();
            return Ok(endpoints.iter().filter(|(org, _)| orgs.is_none_or(|o| o.contains(org))).cloned().collect());
        }
        let all = delivery::endpoints(&self.daemon.redis).await?;
        *self.endpoints.lock().unwrap() = all.clone();
        Ok(all.into_iter().filter(|(org, _)| orgs.is_none_or(|o| o.contains(org))).collect())
    }

    /// Polls the endpoints (of `orgs`, or all) and starts a delivery for each session due.
    /// Returns how long until a session comes due next, if one will.
    async fn look(self: &Arc<Self>, orgs: Option<&HashSet<String>>) -> Option<Duration> {
        let endpoints = match self.endpoints(orgs).await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                tracing::warn!("cannot list webhook endpoints: {e}");
                return None;
            }
        };
        let limits = Limits { batch: 100, backlog_max: self.daemon.config.webhook_backlog_max, due_max: 64 };
        let mut next: Option<u64> = None;
        for (org, id) in endpoints {
            for batch in 1..=BATCHES_PER_LOOK {
                let polled = match delivery::poll(&self.daemon.redis, &org, &id, limits).await {
                    Ok(polled) => polled,
                    Err(e) => {
                        tracing::warn!(org = %org, webhook = %id, "cannot poll a webhook endpoint: {e}");
                        break;
                    }
                };
                for session in polled.due {
                    self.deliver(&org, &id, session);
                }
                next = next.into_iter().chain(polled.wait_ms).min();
                if !polled.more {
                    break;
                }
                if batch == BATCHES_PER_LOOK {
                    // More to read: the organization is looked at again at once, after the
                    // other endpoints had their turn (not every endpoint again).
                    self.wake(&org);
                }
            }
        }
        next.map(Duration::from_millis)
    }

    /// Delivers the session's queue for the endpoint until it is empty or waits for a retry,
    /// unless this worker is at it already. A task waiting for a slot keeps its session due;
    /// the task's end wakes the loop, which is how a session due but busy is looked at again.
    fn deliver(self: &Arc<Self>, org: &str, id: &str, session: String) {
        let key = (org.to_owned(), id.to_owned(), session);
        if !self.busy.lock().unwrap().insert(key.clone()) {
            return;
        }
        let worker = self.clone();
        tokio::spawn(async move {
            let (org, id, session) = &key;
            let _slots = worker.slots.take(org, id).await;
            worker.work_through(org, id, session).await;
            worker.busy.lock().unwrap().remove(&key);
            worker.wake(org);
        });
    }

    async fn work_through(&self, org: &str, id: &str, session: &str) {
        let config = &self.daemon.config;
        let redis = &self.daemon.redis;
        let token = ulid::Ulid::new().to_string();
        let settling = Settling {
            claim_ms: config.webhook_timeout_ms + CLAIM_MARGIN_MS,
            retry_period_ms: config.webhook_retry_period_secs * 1_000,
        };
        let mut next = match delivery::claim(redis, org, id, session, &token, settling.claim_ms).await {
            Ok(attempt) => attempt,
            Err(e) => {
                tracing::warn!(org = %org, webhook = %id, "cannot claim a webhook delivery: {e}");
                None
            }
        };
        while let Some(attempt) = next {
            let outcome = match post(config, &attempt).await {
                Ok(()) => {
                    crate::metrics::delivery("delivered");
                    Outcome::Delivered
                }
                Err(reason) => {
                    crate::metrics::delivery("failed");
                    let failures = attempt.failures.saturating_add(1);
                    let retry_in_ms = delivery::retry_delay(failures, config.webhook_retry_base_ms, config.webhook_retry_max_ms, rand::random());
                    tracing::info!(org = %org, webhook = %id, session = %session, failures, "webhook delivery failed: {reason}");
                    Outcome::Failed { reason, retry_in_ms }
                }
            };
            // Until Redis takes the outcome: a claim left to lapse would deliver the event again.
            let stopping = || self.daemon.is_stopping();
            next = persist("record a webhook delivery", stopping, || delivery::settle(redis, &attempt, &token, &outcome, settling)).await.flatten();
        }
    }
}

/// POSTs the event to the endpoint with the Standard Webhooks headers: `webhook-id` (the
/// event's id, the same on every attempt, for the receiver's deduplication), the timestamp of
/// this attempt, and a `v1` signature by each live secret.
async fn post(config: &crate::config::Config, attempt: &Attempt) -> Result<(), String> {
    let url = reqwest::Url::parse(&attempt.url).map_err(|e| format!("invalid URL: {e}"))?;
    if !config.webhook_allow_private && !crate::egress::literal_host_is_public(&url) {
        return Err("the URL points inside the gateway's network".to_owned());
    }
    let event_id = serde_json::from_str::<serde_json::Value>(&attempt.event)
        .ok()
        .and_then(|e| e["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let timestamp = shared::time::now_millis() / 1_000;
    let signatures: Vec<String> = std::iter::once(&attempt.secret)
        .chain(attempt.previous_secret.as_ref())
        .map(|secret| sign(secret, &event_id, timestamp, &attempt.event))
        .collect::<Result<_, _>>()?;
    let response = client(config)?
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(standardwebhooks::HEADER_WEBHOOK_ID, &event_id)
        .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signatures.join(" "))
        .body(attempt.event.clone())
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timeout".to_owned() } else { format!("request failed: {}", e.without_url()) })?;
    if response.status().is_success() { Ok(()) } else { Err(format!("status {}", response.status().as_u16())) }
}

fn sign(secret: &str, event_id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    standardwebhooks::Webhook::new(secret)
        .and_then(|signer| signer.sign(event_id, timestamp, body.as_bytes()))
        .map_err(|e| format!("cannot sign: {e}"))
}

/// One client for every delivery (connections pooled per endpoint), held to the egress rule,
/// following no redirects: a receiver that moved must be updated, not followed into whatever
/// network it points at.
fn client(config: &crate::config::Config) -> Result<reqwest::Client, String> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            crate::egress::client(config.webhook_allow_private)
                .timeout(Duration::from_millis(config.webhook_timeout_ms))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent("whatsapp-gateway-webhooks/1")
                .build()
                .ok()
        })
        .clone()
        .ok_or_else(|| "cannot build an HTTP client".to_owned())
}

/// Wakes the worker for each organization that announces an event, resubscribing after any
/// loss of the connection.
async fn listen(worker: Arc<Worker>) {
    loop {
        let subscribed = async {
            let client = redis::Client::open(worker.daemon.config.redis_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(keys::all_events_channels()).await?;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                if let Some(org) = keys::org_of_events_channel(message.get_channel_name()) {
                    worker.wake(org);
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        if let Err(e) = subscribed.await {
            tracing::debug!("webhook wake-ups interrupted: {e}");
        }
        if worker.daemon.is_stopping() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own test vector.
    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let signature = sign(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature.unwrap(), "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }
}
