//! A connected session's sender: takes the message at the head of the session's outbox, waits
//! for room within the session's rates ([`crate::limiter`]), sends it with the WhatsApp id it
//! was given when accepted, and waits for WhatsApp's server to acknowledge it before the next
//! one, so messages go out one at a time, in order.
//!
//! A message goes out only from the number it was accepted for: after a logout and a pairing
//! with another number, what was queued fails (`number_changed`) instead.
//!
//! A message to a number that is not on WhatsApp would be taken by WhatsApp's server and
//! delivered to nobody: a direct message is sent only to a number a usync query found on
//! WhatsApp (kept a while per session), else it fails as `not_on_whatsapp`.
//!
//! Nothing accepted is lost: a message leaves the outbox only when acknowledged (`sent`) or
//! failed. A copy is sent again only when the first cannot have been acknowledged any more: the
//! connection that carried it ended first (or its daemon died). A resend is encrypted anew and
//! the recipient's phone may show both copies, so while the connection lives the sender waits
//! for WhatsApp's answer however long it takes, and never fails a message whose
//! acknowledgement may still come. Whoever runs the session next sends a message left at the
//! head again with the same id. Every write carries the session's lease: a sender whose daemon
//! lost the session stops.
//!
//! Failures are told apart as the library classifies them: no connection (the message waits for
//! one, nothing counted), a refusal (it fails now), anything else (counted, tried again after a
//! pause that doubles from `SEND_RETRY_BASE_MS`, failed after [`MAX_ATTEMPTS`]).

use crate::backend::{Acks, Client, SendFailure};
use crate::daemon::Daemon;
use crate::limiter::{self, limiter_lua};
use crate::media;
use shared::media::MediaRef;
use shared::message::{Content, MessageError, MessageStatus};
use shared::outbox::{self, Advanced, Step, failure};
use shared::redis::{Redis, Reply};
use shared::{ApiError, args, keys};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long WhatsApp's server may take to acknowledge a message before the wait is logged (it
/// goes on: whatsmeow waits 75 s, and a dead socket ends the connection, hence the wait, sooner).
const ACK_PATIENCE: Duration = Duration::from_secs(75);
/// Attempts at one message (copies sent, failures) before it fails.
const MAX_ATTEMPTS: i64 = 5;
/// How long a number's presence on WhatsApp is remembered: found there, and not found.
const REGISTERED_TTL_MS: i64 = 24 * 3_600_000;
const UNREGISTERED_TTL_MS: i64 = 3_600_000;
/// How many numbers found on WhatsApp a sender remembers in memory, and for how long.
const REGISTERED_REMEMBERED: usize = 1_024;
const REGISTERED_REMEMBERED_FOR: Duration = Duration::from_secs(600);
/// How often an idle sender looks at the outbox without a wake-up (one lost with a gateway).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Pause before trying again after the connection refused a send or Redis failed.
const PAUSE: Duration = Duration::from_secs(1);
/// The longest single wait for rate room, after which the session's rates are read again.
const RATE_RECHECK: Duration = Duration::from_secs(5);
/// A send within this long of the previous one is part of a run through a queue: it waits a
/// random pause first (`SEND_JITTER_MS`), so sends never leave at a machine's even beat.
const STREAK: Duration = Duration::from_secs(10);

/// One look at the outbox, in one round trip: the head message, dropped from the outbox when
/// it is no longer queued; then, unless it cannot be read, was accepted for another number than
/// ours or waited past its `expiresAt` (whether or not a copy went out: none can be
/// acknowledged any more), and while this gateway holds the lease, a place within the row's
/// rates in the session's sends and at least `gap` ms after the last send to the same chat, and
/// the claim (`sendingAt`: no cancel after it). Each attempt takes a place of its own
/// ([`limiter::place`]: `<id>#<n>`):
/// a resend after a failure counts like any send, and one after a crash finds its place taken.
/// Answers `{verdict, content, attempts so far, WhatsApp id, presenceTyping, last failure, id}`,
/// `{'number_changed' | 'expired', content, id}`, `{'unreadable', id}`, `{'wait', ms}`, or a
/// bare verdict.
const NEXT: &str = concat!(
    limiter_lua!(),
    r"
local outbox, row_key, sends, lease_key, chat_sends = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, lease, me, margin, gap, max_attempts = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local id = redis.call('LINDEX', outbox, 0)
if not id then return {'idle'} end
local message = prefix .. id
if redis.call('HGET', message, 'status') ~= 'queued' then
  redis.call('LREM', outbox, 0, id)
  return {'again'}
end
local doc = redis.call('HGET', message, 'doc')
local readable, content = pcall(cjson.decode, doc or '')
if not readable or type(content) ~= 'table' or type(content['chat']) ~= 'string' then return {'unreadable', id} end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if content['from'] ~= me then return {'number_changed', doc, id} end
local expires = tonumber(content['expiresAt'])
if expires and expires <= now then return {'expired', doc, id} end
if redis.call('GET', lease_key) ~= lease then return {'fenced'} end
local raw = redis.call('GET', row_key)
if not raw then return {'gone'} end
local row = cjson.decode(raw)
local per_min, per_hour = tonumber(row['ratePerMin']) or 1, tonumber(row['ratePerHour']) or 1
local state = redis.call('HMGET', message, 'attempts', 'waId', 'lastError')
local attempts = tonumber(state[1] or '0')
-- A message out of attempts only fails: it takes no place.
if attempts < max_attempts then
  local wait = take_place(sends, id .. '#' .. attempts, per_min, per_hour, now, margin, chat_sends, content['chat'], gap)
  if wait > 0 then return {'wait', tostring(wait)} end
end
redis.call('HSETNX', message, 'sendingAt', now)
local typing = row['presenceTyping'] == true and 1 or 0
return {'send', doc, attempts, state[2], typing, state[3] or '', id}"
);

/// The running sender of one session; dropping it stops it.
pub struct Sender {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Sender {
    /// Starts sending the session's outbox through `client`, logged in as `me` (its JID), under
    /// the lease value `lease`; WhatsApp's answers come through `acks`.
    pub fn start(daemon: Arc<Daemon>, client: Arc<dyn Client>, acks: Arc<Acks>, org: String, session_id: String, me: String, lease: String) -> Sender {
        let wake = Arc::new(Notify::new());
        let run = Run { daemon, client, acks, org, session_id, me, lease, wake: wake.clone(), last_sent: None, registered: HashMap::new() };
        Sender { wake, task: tokio::spawn(run.run()) }
    }

    /// A message was queued: look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
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
    acks: Arc<Acks>,
    org: String,
    session_id: String,
    me: String,
    lease: String,
    wake: Arc<Notify>,
    /// When the last message went out.
    last_sent: Option<Instant>,
    /// Numbers found on WhatsApp this connection, and until when that holds: a run of sends to
    /// one number asks Redis once (what Redis keeps is shared by every connection and daemon).
    registered: HashMap<String, Instant>,
}

/// Where a message's file stands before it is sent.
enum Upload {
    /// On WhatsApp's media servers (or the message has none).
    Done(Option<MediaRef>),
    /// It will never come (its URL failed, the inline file is gone): the message fails.
    Never(String),
    /// It could not be uploaded this time.
    Failed(SendFailure),
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
        let (daemon, org, session) = (self.daemon.clone(), self.org.clone(), self.session_id.clone());
        let (redis, org, session) = (&daemon.redis, org.as_str(), session.as_str());
        let argv = args![
            NEXT, 5,
            keys::session_outbox(org, session), keys::session(org, session), keys::session_sends(org, session), keys::session_lease(org, session),
            keys::session_chat_sends(org, session),
            keys::message(org, ""), self.lease.as_str(), self.me.as_str(), limiter::MARGIN_MS, self.daemon.config.send_chat_gap_ms as i64, MAX_ATTEMPTS,
        ];
        let mut reply = redis.execute("EVAL", argv).await?.into_iter().map(Reply::into_string);
        let verdict = reply.next().flatten().unwrap_or_default();
        let sending = match verdict.as_str() {
            "idle" => return Ok(Turn::Idle),
            "again" => return Ok(Turn::Again),
            "fenced" => return Ok(Turn::Fenced),
            "gone" => return Ok(Turn::Stop),
            "wait" => {
                let wait = reply.next().flatten().and_then(|ms| ms.parse().ok()).unwrap_or(1_000);
                tokio::time::sleep(Duration::from_millis(wait).min(RATE_RECHECK)).await;
                return Ok(Turn::Again);
            }
            "number_changed" | "expired" => {
                let error = match verdict.as_str() {
                    // Accepted for the number paired then; the session was paired with another since.
                    "number_changed" => failure("number_changed", "the session was paired with another number after the message was accepted; it was not sent"),
                    _ => outbox::expired(),
                };
                let (doc, id) = (reply.next().flatten(), reply.next().flatten().unwrap_or_default());
                let Ok(content) = content_of(doc) else { return self.unreadable(&id).await };
                return self.record((&content.id, &content.chat), None, MessageStatus::Failed, Some(error)).await;
            }
            "unreadable" => return self.unreadable(&reply.next().flatten().unwrap_or_default()).await,
            "send" => (
                reply.next().flatten(),
                reply.next().flatten().and_then(|n| n.parse::<i64>().ok()).unwrap_or(0),
                reply.next().flatten().ok_or_else(|| ApiError::internal("a queued message has no WhatsApp id"))?,
                reply.next().flatten().as_deref() == Some("1"),
                reply.next().flatten().filter(|e| !e.is_empty()),
                reply.next().flatten().unwrap_or_default(),
            ),
            other => return Err(ApiError::internal(format!("unexpected outbox verdict {other:?}"))),
        };
        let (doc, attempts, wa_id, presence_typing, last_error, id) = sending;
        let Ok(content) = content_of(doc) else { return self.unreadable(&id).await };
        if attempts >= MAX_ATTEMPTS {
            let reason = last_error.unwrap_or_else(|| "WhatsApp did not acknowledge it".to_owned());
            let error = failure("send_failed", format!("the message was not sent after {MAX_ATTEMPTS} attempts: {reason}"));
            return self.record((&content.id, &content.chat), Some(&wa_id), MessageStatus::Failed, Some(error)).await;
        }
        if is_phone_number(&content.chat) {
            match self.registered(&content.chat).await? {
                Ok(true) => {}
                Ok(false) => {
                    let error = failure("not_on_whatsapp", format!("{} is not on WhatsApp; the message was not sent", content.chat));
                    return self.record((&content.id, &content.chat), Some(&wa_id), MessageStatus::Failed, Some(error)).await;
                }
                Err(failed) => return self.failed(&content, &wa_id, failed, false).await,
            }
        }
        let file = match self.uploaded(&content).await? {
            Upload::Done(file) => file,
            Upload::Never(reason) => {
                return self.record((&content.id, &content.chat), Some(&wa_id), MessageStatus::Failed, Some(failure("media_unavailable", reason))).await;
            }
            Upload::Failed(failed) => return self.failed(&content, &wa_id, failed, false).await,
        };
        // A random pause within a run of sends, then "typing…" before a text, for a time that
        // grows with the text; either way the message's rate place moves to when it goes out.
        let paused = attempts == 0 && self.jitter().await;
        let typing = presence_typing && attempts == 0 && content.text.is_some() && self.show_typing(&content).await;
        if paused || typing {
            self.restamp(&content).await;
        }
        // Expected before the send: the answer may come before `send` returns.
        let answer = self.acks.expect(&wa_id);
        let sent = self.client.send(&wa_id, &content, file.as_ref(), attempts > 0).await;
        self.last_sent = Some(Instant::now());
        if typing && sent.is_err() {
            let _ = self.client.typing(&content.chat, false).await;
        }
        if let Err(failed) = sent {
            return self.failed(&content, &wa_id, failed, false).await;
        }
        outbox::note_attempt(redis, org, &content.id, true, None).await?;
        self.await_ack(&content, &wa_id, answer).await
    }

    /// A media message's file on WhatsApp's media servers: as an earlier attempt uploaded it
    /// (an upload is not repeated), else uploaded now, its reference kept and its bytes cached.
    async fn uploaded(&self, content: &Content) -> Result<Upload, ApiError> {
        if content.media.is_none() {
            return Ok(Upload::Done(None));
        }
        let (redis, org) = (&self.daemon.redis, self.org.as_str());
        // A reference kept by an older version lacks what a message needs to carry it: upload again.
        if let Some(reference) = shared::media::reference(redis, org, &content.id).await?.filter(|r| r.url.is_some()) {
            return Ok(Upload::Done(Some(reference)));
        }
        // The file is held in memory from here until it is on WhatsApp's servers: a few sessions
        // at a time.
        let _slot = media::SENDS.take(org).await;
        let bytes = match media::outgoing(&self.daemon, org, content).await {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(media::Unavailable::Never(reason)) => return Ok(Upload::Never(reason)),
            Err(media::Unavailable::Redis(e)) => return Err(e),
        };
        let reference = match self.client.upload(&content.kind, &bytes).await {
            Ok(reference) => reference,
            Err(failed) => return Ok(Upload::Failed(failed)),
        };
        media::uploaded(&self.daemon, org, &content.id, &reference, bytes).await?;
        Ok(Upload::Done(Some(reference)))
    }

    /// Whether `chat` (a phone-number JID) is on WhatsApp: as the session last found, else asked.
    /// `Err` (inner) when WhatsApp could not say.
    async fn registered(&mut self, chat: &str) -> Result<Result<bool, SendFailure>, ApiError> {
        if self.registered.get(chat).is_some_and(|until| *until > Instant::now()) {
            return Ok(Ok(true));
        }
        let key = keys::session_registered(&self.org, &self.session_id, chat);
        let on = match shared::redis::get_string(&self.daemon.redis, &key).await? {
            Some(known) => known == "1",
            None => {
                let on = match self.client.on_whatsapp(chat).await {
                    Ok(on) => on,
                    Err(failed) => return Ok(Err(failed)),
                };
                let ttl = if on { REGISTERED_TTL_MS } else { UNREGISTERED_TTL_MS };
                self.daemon.redis.execute("SET", args![key, if on { "1" } else { "0" }, "PX", ttl]).await?;
                on
            }
        };
        if on {
            if self.registered.len() >= REGISTERED_REMEMBERED {
                self.registered.clear();
            }
            self.registered.insert(chat.to_owned(), Instant::now() + REGISTERED_REMEMBERED_FOR);
        }
        Ok(Ok(on))
    }

    /// A send (or the check before it) failed: without a connection it waits for one, counting
    /// nothing; refused, the message fails; otherwise the attempt counts (unless `counted`
    /// already: a copy refused) and the message is tried again after a pause, or fails after the
    /// last attempt.
    async fn failed(&self, content: &Content, wa_id: &str, failed: SendFailure, counted: bool) -> Result<Turn, ApiError> {
        let reason = match failed {
            SendFailure::NotConnected(reason) => {
                tracing::info!(session = %self.session_id, message = %content.id, "not sent, no connection: {reason}");
                tokio::time::sleep(PAUSE).await;
                return Ok(Turn::Again);
            }
            SendFailure::Rejected(reason) => {
                return self.record((&content.id, &content.chat), Some(wa_id), MessageStatus::Failed, Some(failure("rejected", reason))).await;
            }
            SendFailure::Failed(reason) => reason,
        };
        let Some(attempts) = outbox::note_attempt(&self.daemon.redis, &self.org, &content.id, !counted, Some(&reason)).await? else { return Ok(Turn::Again) };
        if attempts >= MAX_ATTEMPTS {
            let error = failure("send_failed", format!("the message was not sent after {MAX_ATTEMPTS} attempts: {reason}"));
            return self.record((&content.id, &content.chat), Some(wa_id), MessageStatus::Failed, Some(error)).await;
        }
        let pause = self.daemon.config.send_retry_pause(attempts as u32);
        tracing::info!(session = %self.session_id, message = %content.id, attempts, ?pause, "not sent, trying again: {reason}");
        tokio::time::sleep(pause).await;
        Ok(Turn::Again)
    }

    /// Shows "typing…" in the message's chat for its [`typing_time`]. `false` when the indicator
    /// could not be shown: the message then goes at once.
    async fn show_typing(&self, content: &Content) -> bool {
        if let Err(e) = self.client.typing(&content.chat, true).await {
            tracing::info!(session = %self.session_id, "cannot show typing: {e}");
            return false;
        }
        tokio::time::sleep(typing_time(content.text.as_deref().unwrap_or_default())).await;
        true
    }

    /// Sleeps a random pause of up to `SEND_JITTER_MS` when the previous send was moments ago;
    /// `true` when it did.
    async fn jitter(&self) -> bool {
        let jitter = self.daemon.config.send_jitter_ms;
        if jitter == 0 || !self.last_sent.is_some_and(|at| at.elapsed() < STREAK) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..=jitter))).await;
        true
    }

    /// The message's first attempt goes out now, not when its rate place was taken: the place
    /// moves.
    async fn restamp(&self, content: &Content) {
        let place = limiter::place(&content.id, 0);
        if let Err(e) = limiter::restamp(&self.daemon.redis, &self.org, &self.session_id, &place, &content.chat).await {
            tracing::warn!(session = %self.session_id, "cannot move a delayed message's rate place: {e}");
        }
    }

    /// Waits for WhatsApp's server to take or refuse the message, for as long as the connection
    /// lives: the sender stops with it, and the next one sends the message again. A refusal
    /// worth trying again (a timeout, a rate limit, a server error, stale group addressing)
    /// counts as a failed attempt; any other fails the message.
    async fn await_ack(&self, content: &Content, wa_id: &str, mut answer: oneshot::Receiver<Option<String>>) -> Result<Turn, ApiError> {
        let answer = loop {
            match tokio::time::timeout(ACK_PATIENCE, &mut answer).await {
                Ok(answer) => break answer,
                Err(_) => tracing::warn!(session = %self.session_id, message = %content.id, "no acknowledgement from WhatsApp yet; waiting (a resend could show twice)"),
            }
        };
        match answer {
            Ok(None) => self.record((&content.id, &content.chat), Some(wa_id), MessageStatus::Sent, None).await,
            Ok(Some(code)) if TRANSIENT_ACK_ERRORS.contains(&code.as_str()) => {
                let reason = format!("WhatsApp's server refused the message for now (code {code})");
                self.failed(content, wa_id, SendFailure::Failed(reason), true).await
            }
            Ok(Some(code)) => {
                let error = failure("server_refused", format!("WhatsApp's server refused the message (code {code})"));
                self.record((&content.id, &content.chat), Some(wa_id), MessageStatus::Failed, Some(error)).await
            }
            // Another message took the slot: cannot happen with one sender per session.
            Err(_) => Ok(Turn::Again),
        }
    }

    /// The head message cannot be read (a document an older version stored, a damaged entry):
    /// it fails as `unreadable`, and the outbox goes on.
    async fn unreadable(&self, message_id: &str) -> Result<Turn, ApiError> {
        tracing::warn!(session = %self.session_id, message = message_id, "the queued message cannot be read; failing it");
        self.record((message_id, ""), None, MessageStatus::Failed, Some(outbox::unreadable())).await
    }

    /// Moves the message (our id, its chat) to `status`, under the lease. That WhatsApp took
    /// it (`sent`) is true whoever holds the session now, so it is recorded without the lease,
    /// by a task of its own that outlives this sender: a sender stopped with the message in
    /// flight (its lease lapsed while Redis did not answer) does not leave it to be sent again.
    async fn record(&self, (message_id, chat): (&str, &str), wa_id: Option<&str>, status: MessageStatus, error: Option<MessageError>) -> Result<Turn, ApiError> {
        let (daemon, org, session_id) = (self.daemon.clone(), self.org.clone(), self.session_id.clone());
        let (message_id, chat, wa_id) = (message_id.to_owned(), chat.to_owned(), wa_id.map(str::to_owned));
        let lease = (status != MessageStatus::Sent).then(|| self.lease.clone());
        let recorded = tokio::spawn(async move {
            let step = Step {
                org: &org,
                session_id: &session_id,
                message_id: &message_id,
                chat: &chat,
                wa_message_id: wa_id.as_deref(),
                status,
                error,
                lease,
                unattended: false,
                retention: daemon.config.retention(),
            };
            // WhatsApp took it: recorded until Redis answers, or a failed write would send it again.
            let give_up = || status != MessageStatus::Sent || daemon.is_stopping();
            crate::daemon::persist("record a sent message", give_up, || outbox::advance(&daemon.redis, &step))
                .await
                .ok_or_else(ApiError::unavailable)
        });
        let advanced = recorded.await.map_err(|e| ApiError::internal(format!("recording a message's step failed: {e}")))??;
        if matches!(advanced, Advanced::Moved) {
            crate::metrics::message(if status == MessageStatus::Sent { "sent" } else { "failed" });
        }
        match advanced {
            Advanced::Fenced => Ok(Turn::Fenced),
            Advanced::Moved | Advanced::Unchanged => Ok(Turn::Again),
        }
    }
}

/// How long "typing…" shows before a text: half a second and 30 ms a character, at most 4 s.
fn typing_time(text: &str) -> Duration {
    Duration::from_millis((500 + 30 * text.chars().count() as u64).min(4_000))
}

/// Error codes of WhatsApp's server acknowledgement that are worth trying again with the same id
/// (the copy was refused, so it reached nobody): a timeout, stale group addressing (the next
/// send reads the group afresh), a rate limit, a server error.
const TRANSIENT_ACK_ERRORS: &[&str] = &["408", "421", "429", "500", "503"];

/// Whether `chat` is a person's phone-number JID (a group, a LID or a broadcast list is not).
fn is_phone_number(chat: &str) -> bool {
    chat.ends_with("@s.whatsapp.net")
}

/// A message's content as the outbox script returned it.
fn content_of(doc: Option<String>) -> Result<Content, ApiError> {
    outbox::decode_content(&doc.unwrap_or_default())
}
