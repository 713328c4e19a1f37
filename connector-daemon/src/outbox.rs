//! A connected session's sender: takes the message at the head of the session's outbox, waits
//! for room within the session's rates ([`crate::limiter`]), sends it with the WhatsApp id it
//! was given when accepted, and waits for WhatsApp's server to acknowledge it before the next
//! one, so messages go out one at a time, in order.
//!
//! A message goes out only from the number it was accepted for: after a logout and a pairing
//! with another number, what was queued fails (`number_changed`) instead.
//!
//! Nothing accepted is lost or sent twice: a message leaves the outbox only when acknowledged
//! (`sent`) or failed, so a daemon that dies mid-send leaves it at the head, and whoever runs
//! the session next sends it again with the same id, which WhatsApp delivers once. Every write
//! carries the session's lease: a sender whose daemon lost the session stops.

use crate::backend::{Client, SendFailure};
use crate::daemon::Daemon;
use crate::limiter::{self, Rates};
use shared::message::{Content, MessageError, MessageStatus};
use shared::outbox::{self, Advanced, Claim, Step, failure};
use shared::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long WhatsApp's server may take to acknowledge a message before it is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends of one message left unacknowledged before it fails.
const MAX_ATTEMPTS: i64 = 5;
/// How often an idle sender looks at the outbox without a wake-up (one lost with a gateway).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Pause before trying again after the connection refused a send or Redis failed.
const PAUSE: Duration = Duration::from_secs(1);
/// The longest single wait for rate room, after which the session's rates are read again.
const RATE_RECHECK: Duration = Duration::from_secs(5);

/// The running sender of one session; dropping it stops it.
pub struct Sender {
    wake: Arc<Notify>,
    acks: mpsc::UnboundedSender<(String, Option<String>)>,
    task: JoinHandle<()>,
}

impl Sender {
    /// Starts sending the session's outbox through `client`, logged in as `me` (its JID), under
    /// the lease value `lease`.
    pub fn start(daemon: Arc<Daemon>, client: Arc<dyn Client>, org: String, session_id: String, me: String, lease: String) -> Sender {
        let wake = Arc::new(Notify::new());
        let (acks, inbox) = mpsc::unbounded_channel();
        let run = Run { daemon, client, org, session_id, me, lease, wake: wake.clone(), acks: inbox };
        Sender { wake, acks, task: tokio::spawn(run.run()) }
    }

    /// A message was queued: look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// WhatsApp's server answered for the message with WhatsApp id `id`.
    pub fn acked(&self, id: String, error: Option<String>) {
        let _ = self.acks.send((id, error));
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Run {
    daemon: Arc<Daemon>,
    client: Arc<dyn Client>,
    org: String,
    session_id: String,
    me: String,
    lease: String,
    wake: Arc<Notify>,
    acks: mpsc::UnboundedReceiver<(String, Option<String>)>,
}

/// What one look at the outbox came to.
enum Turn {
    /// A message was dealt with (or needs another try): look again at once.
    Again,
    /// The outbox is empty.
    Idle,
    /// A write was refused: the lease lapsed (a slow renewal takes it back) or went to another
    /// gateway (the supervisor then stops this sender). Wait, then look again.
    Fenced,
    /// The session's row is gone.
    Stop,
}

impl Run {
    async fn run(mut self) {
        loop {
            match self.turn().await {
                Ok(Turn::Again) => {}
                Ok(Turn::Idle) => {
                    let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                }
                Ok(Turn::Stop) => return,
                Ok(Turn::Fenced) => tokio::time::sleep(PAUSE).await,
                Err(e) => {
                    tracing::warn!(session = %self.session_id, "sender: {e}; retrying");
                    tokio::time::sleep(PAUSE).await;
                }
            }
        }
    }

    async fn turn(&mut self) -> Result<Turn, ApiError> {
        let redis = &self.daemon.redis;
        let Some(id) = outbox::head(redis, &self.org, &self.session_id).await? else { return Ok(Turn::Idle) };
        let Some((content, fields)) = outbox::content(redis, &self.org, &id).await? else {
            // Past its retention: nothing left to send.
            outbox::discard(redis, &self.org, &self.session_id, &id).await?;
            return Ok(Turn::Again);
        };
        if fields.get("status").map(String::as_str) != Some(MessageStatus::Queued.as_str()) {
            outbox::discard(redis, &self.org, &self.session_id, &id).await?;
            return Ok(Turn::Again);
        }
        if content.from.as_deref() != Some(self.me.as_str()) {
            // Accepted for the number paired then; the session was paired with another since.
            let error = failure("number_changed", "the session was paired with another number after the message was accepted; it was not sent");
            return self.record(&content, MessageStatus::Failed, Some(error)).await;
        }
        let begun = fields.contains_key("sendingAt");
        if !begun && content.expires_at.is_some_and(|at| at <= shared::time::now_millis()) {
            let error = failure("expired", "the message waited in the outbox past its maximum age; it was not sent");
            return self.record(&content, MessageStatus::Failed, Some(error)).await;
        }
        if !self.room(&content).await? {
            return Ok(Turn::Stop);
        }
        let attempts = match outbox::claim(redis, &self.org, &self.session_id, &id, &self.lease).await? {
            Claim::Fenced => return Ok(Turn::Fenced),
            Claim::Settled => return Ok(Turn::Again),
            Claim::Attempt(n) => n,
        };
        if attempts >= MAX_ATTEMPTS {
            let error = failure("no_server_ack", format!("WhatsApp's server did not acknowledge the message after {MAX_ATTEMPTS} sends"));
            return self.record(&content, MessageStatus::Failed, Some(error)).await;
        }
        match self.client.send(&content).await {
            Ok(()) => {}
            Err(SendFailure::Rejected(reason)) => {
                return self.record(&content, MessageStatus::Failed, Some(failure("rejected", reason))).await;
            }
            Err(SendFailure::NotConnected(reason)) => {
                tracing::info!(session = %self.session_id, message = %id, "not sent, the connection is not ready: {reason}");
                tokio::time::sleep(PAUSE).await;
                return Ok(Turn::Again);
            }
        }
        outbox::count_attempt(redis, &self.org, &id).await?;
        self.await_ack(&content).await
    }

    /// Waits for room within the session's rates; `false` when the session's row is gone.
    async fn room(&self, content: &Content) -> Result<bool, ApiError> {
        loop {
            let Some((row, _)) = shared::store::get_with_control(&self.daemon.redis, &self.org, &self.session_id).await? else { return Ok(false) };
            let rates = Rates { per_min: row.rate_per_min, per_hour: row.rate_per_hour };
            match limiter::take(&self.daemon, &self.org, &self.session_id, &content.id, rates).await? {
                None => return Ok(true),
                Some(wait) => tokio::time::sleep(wait.min(RATE_RECHECK)).await,
            }
        }
    }

    /// Waits for WhatsApp's server to take or refuse the message; unanswered, it is sent again.
    async fn await_ack(&mut self, content: &Content) -> Result<Turn, ApiError> {
        let wa_id = content.wa_id.as_deref().unwrap_or_default();
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some((id, None))) if id == wa_id => return self.record(content, MessageStatus::Sent, None).await,
                Ok(Some((id, Some(code)))) if id == wa_id => {
                    let error = failure("server_refused", format!("WhatsApp's server refused the message (code {code})"));
                    return self.record(content, MessageStatus::Failed, Some(error)).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(Turn::Stop),
                Err(_) => {
                    tracing::info!(session = %self.session_id, message = %content.id, "no acknowledgement in time; sending again");
                    return Ok(Turn::Again);
                }
            }
        }
    }

    async fn record(&self, content: &Content, status: MessageStatus, error: Option<MessageError>) -> Result<Turn, ApiError> {
        let step = Step {
            org: &self.org,
            session_id: &self.session_id,
            message_id: &content.id,
            chat: &content.chat,
            wa_message_id: content.wa_id.as_deref(),
            status,
            error,
            lease: Some(self.lease.clone()),
            retention: self.daemon.config.retention(),
        };
        match outbox::advance(&self.daemon.redis, &step).await? {
            Advanced::Fenced => Ok(Turn::Fenced),
            Advanced::Moved | Advanced::Unchanged => Ok(Turn::Again),
        }
    }
}
