//! One simulated WhatsApp Web client: its connection runs (a socket that takes
//! `sim_connect_ms` to open, then a login with the stored device or rotating QR codes), pairing
//! by QR or phone code, and what a connected client does (send, download, typing, presence).
//!
//! It behaves as whatsapp-rust's client does with its own reconnect off: a run that ends
//! reports [`BackendEvent::Disconnected`] with its cause and the client can run again
//! ([`Client::reconnect`]), keeping what it holds in memory; a final event (logged out,
//! replaced, banned, QR codes exhausted) ends the client for good.

use super::phone::{address_book, joined_groups, pairing_code, qr_code};
use super::server::{self, DROP_ONLINE, ONLINE_REFRESH, ONLINE_TTL_MS, REFRESH_ONLINE, reachable};
use crate::backend::{BackendEvent, Cause, Client, Events, Identity, Inbox, SendFailure, receipts_by_chat};
use crate::config::SimulatorTimings;
use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use shared::directory::Group;
use shared::inbox::Incoming;
use shared::keys;
use shared::media::{FetchError, MediaRef};
use shared::message::{Content, MessageStatus};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The linked device a simulated session stores, as WhatsApp's store holds the real one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    pub jid: String,
    pub lid: String,
    pub phone: String,
    pub push_name: String,
}

impl Device {
    fn identity(&self) -> Identity {
        Identity {
            jid: self.jid.clone(),
            lid: Some(self.lid.clone()),
            phone: Some(self.phone.clone()),
            push_name: Some(self.push_name.clone()),
        }
    }
}

/// The simulated device, in the session's store.
pub const DEVICE_FILE: &str = "simulator-device.json";

fn read_device(file: &PathBuf) -> Option<Device> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

/// A phone code, as the simulated server issued it on one connection.
struct IssuedCode {
    code: String,
    phone: String,
    at: Instant,
}

#[derive(Default)]
struct SimState {
    /// The current connection run; a run's background tasks stop once it is over.
    run: u64,
    /// The current run is live (connecting, pairing or logged in).
    live: bool,
    /// Its socket is up (before login).
    socket_up: bool,
    /// The client is done: closed by its owner, or ended by a final event.
    closed: bool,
    qr: Option<String>,
    /// The last phone code issued on this connection.
    pairing_code: Option<IssuedCode>,
    device: Option<Device>,
    /// Logged in with `device` on the current run.
    logged_in: bool,
    /// Armed by a pairing, in memory only (as whatsapp-rust's flag is): the next login on this
    /// client runs the first full sync, the address book included. A new client does not.
    initial_sync: bool,
    /// The socket went silent: nothing written reaches the server, nothing comes back, until
    /// the keepalive notices and the run ends.
    stalled: bool,
    /// How long the server takes to acknowledge this client's messages, when told otherwise.
    ack_delay_ms: Option<u64>,
}

pub struct SimClient {
    /// This client, for the tasks it starts.
    me: std::sync::Weak<SimClient>,
    pub session_id: String,
    /// This client among all the simulated server's clients, in every daemon.
    pub token: String,
    timings: SimulatorTimings,
    device_file: PathBuf,
    redis: ConnectionManager,
    events: Events,
    inbox: Arc<dyn Inbox>,
    /// Rung when a message for this client's number arrived.
    pub arrivals: Notify,
    state: Mutex<SimState>,
    /// The simulator's clients, to leave when closed.
    clients: Arc<Mutex<HashMap<String, Arc<SimClient>>>>,
}

impl SimClient {
    pub fn new(
        session_id: &str,
        timings: SimulatorTimings,
        device_file: PathBuf,
        redis: ConnectionManager,
        events: Events,
        inbox: Arc<dyn Inbox>,
        clients: Arc<Mutex<HashMap<String, Arc<SimClient>>>>,
    ) -> Arc<SimClient> {
        Arc::new_cyclic(|me| SimClient {
            me: me.clone(),
            session_id: session_id.to_owned(),
            token: ulid::Ulid::new().to_string(),
            timings,
            device_file,
            redis,
            events,
            inbox,
            arrivals: Notify::new(),
            state: Mutex::default(),
            clients,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Emits while the client is open; the state lock keeps events in the order they happened.
    fn emit_if_open(&self, state: &SimState, event: BackendEvent) -> bool {
        !state.closed && self.events.send(event)
    }

    /// Starts a connection run.
    pub fn start(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let run = {
            let mut state = self.state();
            state.run += 1;
            state.live = true;
            state.run
        };
        tokio::spawn(me.connection(run));
    }

    /// Whether `run` is still the live run of an open client.
    fn current(&self, run: u64) -> bool {
        let state = self.state();
        !state.closed && state.live && state.run == run
    }

    /// The current run ends with `event`: the socket is gone, the live QR code and phone code
    /// with it. With `last`, the client is done too.
    fn end_run(&self, event: BackendEvent, last: bool) {
        let mut state = self.state();
        if !state.live && !last {
            return;
        }
        self.emit_if_open(&state, event);
        state.live = false;
        state.socket_up = false;
        state.logged_in = false;
        state.qr = None;
        state.pairing_code = None;
        state.stalled = false;
        state.closed |= last;
    }

    /// The socket goes silent (a half-open TCP connection): what the client writes goes nowhere,
    /// and after `sim_keepalive_ms` without an answer the keepalive ends the run.
    pub fn stall(&self) {
        let run = {
            let mut state = self.state();
            if !state.live {
                return;
            }
            state.stalled = true;
            state.run
        };
        let (me, after) = (self.me.clone(), Duration::from_millis(self.timings.sim_keepalive_ms));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(me) = me.upgrade().filter(|me| me.current(run)) {
                me.drop_connection("keepalive timed out: the socket went silent", Cause::Lost);
            }
        });
    }

    /// The server takes `ms` to acknowledge this client's messages from now on.
    pub fn delay_acks(&self, ms: u64) {
        self.state().ack_delay_ms = Some(ms);
    }

    /// The server ends the connection (a drop, a stream error): the client may run again.
    pub fn drop_connection(&self, reason: &str, cause: Cause) {
        self.end_run(BackendEvent::Disconnected { reason: reason.to_owned(), cause }, false);
    }

    /// The server ends this client with a final event.
    pub fn end(&self, event: BackendEvent) {
        self.end_run(event, true);
    }

    async fn connection(self: Arc<Self>, run: u64) {
        let timings = self.timings.clone();
        tokio::time::sleep(Duration::from_millis(timings.sim_connect_ms)).await;
        if !self.current(run) {
            return;
        }
        if let Err(reason) = reachable(&mut self.redis.clone()).await {
            return self.drop_connection(&reason, Cause::Lost);
        }
        self.state().socket_up = true;
        if let Some(device) = read_device(&self.device_file) {
            return self.log_in(run, device).await;
        }
        for round in 0..timings.sim_qr_count {
            let valid_for = Duration::from_millis(if round == 0 { timings.sim_first_qr_ms } else { timings.sim_next_qr_ms });
            {
                let mut state = self.state();
                if state.device.is_some() || !state.live || state.run != run {
                    return;
                }
                let code = qr_code();
                state.qr = Some(code.clone());
                if !self.emit_if_open(&state, BackendEvent::Qr { code, valid_for }) {
                    return;
                }
            }
            tokio::time::sleep(valid_for).await;
        }
        let outstanding = {
            let mut state = self.state();
            if state.device.is_some() || !state.live || state.run != run {
                return;
            }
            state.qr = None;
            state.pairing_code.as_ref().is_some_and(|c| c.at.elapsed() < self.code_lifetime())
        };
        if outstanding {
            // As WhatsApp Web does: the socket stays up for the phone code being typed.
            let state = self.state();
            self.emit_if_open(&state, BackendEvent::QrExhausted { code_outstanding: true });
        } else {
            self.end(BackendEvent::QrExhausted { code_outstanding: false });
        }
    }

    /// Logs in with the stored device, if the server still has it linked.
    async fn log_in(self: &Arc<Self>, run: u64, device: Device) {
        // The simulated server's state lives in Redis: without it the server is unreachable,
        // which is a failed connection, not an unlinked device.
        let linked: redis::RedisResult<bool> = self.redis.clone().hexists(keys::simulator_linked_devices(), &device.device_id).await;
        match linked {
            Ok(true) => {}
            Ok(false) => return self.end(BackendEvent::LoggedOut { reason: "the device was unlinked from the phone".into() }),
            Err(e) => return self.drop_connection(&format!("the simulated server is unreachable: {e}"), Cause::Lost),
        }
        // A WhatsApp client announces itself online at every login, whatever its owner wants.
        self.announce_presence(&device, "available").await;
        let full_sync = {
            let mut state = self.state();
            if !state.live || state.run != run || !self.emit_if_open(&state, BackendEvent::Connected(device.identity())) {
                return;
            }
            state.logged_in = true;
            state.device = Some(device.clone());
            std::mem::take(&mut state.initial_sync)
        };
        self.go_online(run, &device);
        if full_sync {
            // The first full sync after a pairing: the profile name (and, with it, another
            // automatic "online"), then the address book, a contact at a time, as the library
            // reports app-state sync (one `ContactUpdate` each).
            self.announce_presence(&device, "available").await;
            let state = self.state();
            if self.emit_if_open(&state, BackendEvent::ProfileName(device.push_name.clone())) {
                for contact in address_book(self.timings.sim_contacts) {
                    self.emit_if_open(&state, BackendEvent::Contacts(vec![contact]));
                }
            }
        }
    }

    async fn announce_presence(&self, device: &Device, presence: &str) {
        let entry = serde_json::json!({ "session": self.session_id, "jid": device.jid, "presence": presence, "at": shared::time::now_millis() });
        if let Err(e) = server::record(&mut self.redis.clone(), &keys::simulator_presence(), entry).await {
            tracing::warn!(session = %self.session_id, "simulator: cannot record a presence: {e}");
        }
    }

    fn code_lifetime(&self) -> Duration {
        Duration::from_millis(self.timings.sim_pairing_code_ms)
    }

    pub fn shows_qr(&self, code: &str) -> bool {
        let state = self.state();
        !state.closed && state.live && state.device.is_none() && state.qr.as_deref() == Some(code)
    }

    /// Whether `code` was issued on this live connection for `phone` and is still valid.
    pub fn issued_code(&self, code: &str, phone: &str) -> bool {
        let typed: String = code.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_uppercase();
        let state = self.state();
        let valid = state.pairing_code.as_ref().is_some_and(|c| c.code == typed && c.phone == phone && c.at.elapsed() < self.code_lifetime());
        !state.closed && state.live && state.device.is_none() && valid
    }

    /// The server voids the outstanding phone code and asks for a new one (WhatsApp's
    /// `refresh_code`, which whatsapp-rust reports as `PairingCodeRefresh`).
    pub fn void_code(&self) {
        let mut state = self.state();
        if state.pairing_code.take().is_some() {
            let reason = "code_expired: WhatsApp asked for a new phone code".to_owned();
            self.emit_if_open(&state, BackendEvent::PairingFailed { reason, retry_after: None });
        }
    }

    pub fn linked_phone(&self) -> Option<String> {
        self.state().device.as_ref().map(|d| d.phone.clone())
    }

    /// The phone accepted: store the device, register it server-side, and, as WhatsApp does
    /// after every pairing, restart the stream (515): the client logs in on its next run.
    pub async fn pair(self: &Arc<Self>, phone: &str) {
        let device = Device {
            device_id: ulid::Ulid::new().to_string(),
            jid: format!("{phone}@s.whatsapp.net"),
            lid: format!("{}@lid", rand::random_range(100_000_000_000_000u64..999_999_999_999_999)),
            phone: phone.to_owned(),
            push_name: format!("Simulated {phone}"),
        };
        let stored = std::fs::create_dir_all(self.device_file.parent().unwrap_or(&self.device_file))
            .and_then(|()| std::fs::write(&self.device_file, serde_json::to_vec(&device).unwrap_or_default()));
        if let Err(e) = stored {
            tracing::warn!(session = %self.session_id, "simulator: cannot store the device: {e}");
            return;
        }
        let _: redis::RedisResult<i64> = self.redis.clone().hset(keys::simulator_linked_devices(), &device.device_id, phone).await;
        {
            let mut state = self.state();
            state.qr = None;
            state.pairing_code = None;
            state.initial_sync = true;
            if !self.emit_if_open(&state, BackendEvent::Paired(device.identity())) {
                return;
            }
            state.device = Some(device);
        }
        self.drop_connection("stream error 515: WhatsApp restarts the stream after a pairing", Cause::Restart);
    }

    /// Logged in: the server keeps this client's record and hands it what arrived for it.
    fn go_online(self: &Arc<Self>, run: u64, device: &Device) {
        tokio::spawn(self.clone().stay_online(run, device.device_id.clone()));
        tokio::spawn(self.clone().receive(run, device.clone()));
    }

    /// Hands the client what arrived for its device, oldest first, a batch at a time, until its
    /// run is over. A batch stays on the server until the client stored it and the
    /// acknowledgement came through (`sim_inbound_ack_ms` later).
    async fn receive(self: Arc<Self>, run: u64, device: Device) {
        let mut redis = self.redis.clone();
        let key = keys::simulator_inbound(&device.device_id);
        while self.current(run) {
            if self.state().stalled {
                // A silent socket carries nothing in either direction.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let pending: redis::RedisResult<HashMap<String, String>> = redis.hgetall(&key).await;
            let Ok(pending) = pending else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let now = shared::time::now_millis();
            let mut pending: Vec<(String, super::phone::PhoneMessage)> = pending
                .into_iter()
                .filter_map(|(entry, record)| Some((entry, serde_json::from_str(&record).ok()?)))
                .filter(|(_, m): &(String, super::phone::PhoneMessage)| m.due_at().is_none_or(|due| due <= now))
                .collect();
            if pending.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.arrivals.notified()).await;
                continue;
            }
            pending.sort_by_key(|(entry, _)| super::phone::entry_order(entry));
            pending.truncate(self.timings.sim_inbound_batch.max(1));
            let batch: Vec<Incoming> = pending.iter().map(|(_, m)| m.incoming(&self.session_id, &device.jid)).collect();
            let kept = match self.inbox.store(batch.clone()).await {
                Ok(kept) => kept,
                Err(e) => {
                    tracing::warn!(session = %self.session_id, "simulator: the client did not store received messages: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tokio::time::sleep(Duration::from_millis(self.timings.sim_inbound_ack_ms)).await;
            if !self.current(run) {
                return;
            }
            for (entry, message) in &pending {
                // One it could not decrypt: the sender's phone sends it again, readable, later.
                let handled: redis::RedisResult<i64> = match message.recovered() {
                    Some(again) => redis.hset(&key, entry, serde_json::to_string(&again).unwrap_or_default()).await,
                    None => redis.hdel(&key, entry).await,
                };
                if let Err(e) = handled {
                    tracing::warn!(session = %self.session_id, "simulator: cannot settle a delivered message: {e}");
                }
            }
            let read: Vec<&Incoming> = kept.read.iter().filter_map(|&i| batch.get(i)).collect();
            self.mark_read(&mut redis, &read).await;
        }
    }

    /// Read receipts for received messages, per chat and sender, as WhatsApp Web sends them.
    async fn mark_read(&self, redis: &mut ConnectionManager, batch: &[&Incoming]) {
        let read = batch.iter().map(|Incoming { content, wa_id, .. }| ((content.chat.clone(), content.from.clone().unwrap_or_default()), wa_id.clone()));
        for ((chat, sender), ids) in receipts_by_chat(read) {
            let entry = serde_json::json!({ "session": self.session_id, "chat": chat, "sender": sender, "ids": ids, "at": shared::time::now_millis() });
            if server::record(redis, &keys::simulator_read_receipts(), entry).await.is_ok() {
                self.inbox.read(&chat, &sender, ids).await;
            }
        }
    }

    /// The simulated server's record of this client while it is logged in, refreshed until its
    /// run is over. Taking the device's record from another live client replaces that one; a
    /// client finding its record taken by another (its own lapsed meanwhile) was live beside it
    /// all the same: that is recorded too, and it is replaced.
    async fn stay_online(self: Arc<Self>, run: u64, device_id: String) {
        let mut redis = self.redis.clone();
        let key = keys::simulator_online(&device_id);
        let previous: Option<String> = redis::cmd("SET")
            .arg(&key).arg(&self.token).arg("PX").arg(ONLINE_TTL_MS).arg("GET")
            .query_async(&mut redis)
            .await
            .unwrap_or(None);
        if let Some(previous) = previous.filter(|p| *p != self.token) {
            tracing::warn!(session = %self.session_id, "simulator: a second client logged in with a device that is online; replacing the first");
            self.overlapped(&mut redis, &device_id, &previous, &self.token).await;
        }
        loop {
            tokio::time::sleep(ONLINE_REFRESH).await;
            if !self.current(run) {
                // A newer run of this client holds the record now, else it goes.
                if !self.state().live {
                    self.go_offline(&device_id).await;
                }
                return;
            }
            let refreshed: redis::RedisResult<i64> =
                redis::cmd("EVAL").arg(REFRESH_ONLINE).arg(1).arg(&key).arg(&self.token).arg(ONLINE_TTL_MS).query_async(&mut redis).await;
            // A refresh that waited on Redis may land after this client closed: only a client
            // still live when its record turned out taken was live beside the other.
            if refreshed == Ok(0) && self.current(run) {
                let holder: Option<String> = redis.get(&key).await.unwrap_or(None);
                tracing::warn!(session = %self.session_id, "simulator: another client took the device's record while this one was live; replacing this one");
                self.overlapped(&mut redis, &device_id, &self.token, holder.as_deref().unwrap_or("?")).await;
                return;
            }
            if refreshed == Ok(0) {
                return;
            }
        }
    }

    /// Two clients of one device were live at once: recorded, and the server ends `replaced`.
    async fn overlapped(&self, redis: &mut ConnectionManager, device_id: &str, replaced: &str, by: &str) {
        let entry = serde_json::json!({
            "device": device_id, "session": self.session_id, "replaced": replaced, "by": by, "at": shared::time::now_millis(),
        });
        let _: redis::RedisResult<i64> = redis.lpush(keys::simulator_replacements(), entry.to_string()).await;
        let _: redis::RedisResult<String> = redis.xadd(keys::simulator_control(), "*", &[("action", "replace_client"), ("client", replaced)]).await;
    }

    /// The device's record goes with the client that holds it.
    async fn go_offline(&self, device_id: &str) {
        let mut redis = self.redis.clone();
        let _: redis::RedisResult<i64> =
            redis::cmd("EVAL").arg(DROP_ONLINE).arg(1).arg(keys::simulator_online(device_id)).arg(&self.token).query_async(&mut redis).await;
    }

    fn close(&self) -> Option<Device> {
        let device = {
            let mut state = self.state();
            state.closed = true;
            state.live = false;
            state.device.clone()
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(&self.session_id).is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), self)) {
            clients.remove(&self.session_id);
        }
        device
    }

    /// The device this client is logged in with on its current run.
    fn logged_in_device(&self) -> Option<Device> {
        let state = self.state();
        (state.live && state.logged_in && !state.closed).then(|| state.device.clone()).flatten()
    }
}

#[async_trait]
impl Client for SimClient {
    async fn reconnect(&self) -> Result<(), String> {
        {
            let state = self.state();
            if state.closed {
                return Err("the client was closed".to_owned());
            }
            if state.live {
                return Ok(());
            }
        }
        self.start();
        Ok(())
    }

    async fn wait_for_socket(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            {
                let state = self.state();
                if state.closed {
                    return Err("the client was closed".to_owned());
                }
                if state.socket_up {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("the socket did not open within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pair_with_code(&self, phone: &str) -> Result<String, String> {
        let mut state = self.state();
        if state.closed || !state.socket_up {
            // As whatsapp-rust answers a code request made before the socket is up.
            return Err("client is not connected".into());
        }
        if state.device.is_some() {
            return Err("the session is already paired".into());
        }
        let code = pairing_code();
        state.pairing_code = Some(IssuedCode { code: code.clone(), phone: phone.to_owned(), at: Instant::now() });
        Ok(code)
    }

    async fn set_presence(&self, available: bool) -> Result<(), String> {
        let device = self.logged_in_device().ok_or("not logged in")?;
        self.announce_presence(&device, if available { "available" } else { "unavailable" }).await;
        Ok(())
    }

    async fn logout(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        let device = self.logged_in_device();
        let unlinked = match (reachable(&mut redis).await, &device) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err("not logged in".to_owned()),
            (Ok(()), Some(device)) => {
                let removed: redis::RedisResult<i64> = redis.hdel(keys::simulator_linked_devices(), &device.device_id).await;
                removed.map(drop).map_err(|e| format!("the simulated server did not answer: {e}"))
            }
        };
        if let Some(device) = self.close() {
            self.go_offline(&device.device_id).await;
        }
        unlinked
    }

    async fn upload(&self, kind: &str, file: &[u8]) -> Result<MediaRef, SendFailure> {
        if self.logged_in_device().is_none() {
            return Err(SendFailure::NotConnected("not connected".into()));
        }
        let mut redis = self.redis.clone();
        reachable(&mut redis).await.map_err(SendFailure::NotConnected)?;
        let unreachable = |e: redis::RedisError| SendFailure::NotConnected(format!("the simulated media servers are unreachable: {e}"));
        let reference = server::upload(&mut redis, kind, file).await.map_err(unreachable)?;
        let _: i64 = redis.incr(keys::simulator_uploads(), 1).await.map_err(unreachable)?;
        Ok(reference)
    }

    async fn send(&self, wa_id: &str, message: &Content, file: Option<&MediaRef>, _fresh: bool) -> Result<(), SendFailure> {
        let device = self.logged_in_device().ok_or_else(|| SendFailure::NotConnected("not connected".into()))?;
        let (run, stalled, ack_ms) = {
            let state = self.state();
            (state.run, state.stalled, state.ack_delay_ms.unwrap_or(self.timings.sim_ack_ms))
        };
        if stalled {
            // Written into a socket nobody reads any more: the library cannot tell yet.
            return Ok(());
        }
        let mut redis = self.redis.clone();
        reachable(&mut redis).await.map_err(SendFailure::NotConnected)?;
        let id = wa_id.to_owned();
        let unreachable = |e: redis::RedisError| SendFailure::NotConnected(format!("the simulated server is unreachable: {e}"));
        let refusal: Option<String> = redis.hget(keys::simulator_refusals(), &message.chat).await.map_err(unreachable)?;
        let ack_error = match refusal.as_deref() {
            // As the library reports each, once it classified it.
            Some("forbidden") => return Err(SendFailure::Rejected("WhatsApp refused the message (403 forbidden: not a participant)".into())),
            Some("encryption") => return Err(SendFailure::Failed("encryption failed for all 1 recipient device(s)".into())),
            Some("not_logged_in") => return Err(SendFailure::Failed("client is not logged in".into())),
            Some("timeout") => return Err(SendFailure::Failed("IQ request timed out".into())),
            Some("undeliverable") => None,
            Some(other) => other.strip_prefix("ack:").map(str::to_owned),
            None => None,
        };
        if message.media.is_some() && file.is_none() {
            return Err(SendFailure::Rejected("a media message needs its uploaded file".into()));
        }
        // A number not on WhatsApp: the server takes the message and delivers it to nobody.
        let recipient = message.chat.strip_suffix("@s.whatsapp.net");
        let nobody = match recipient {
            Some(phone) => redis.sismember(keys::simulator_unregistered(), phone).await.map_err(unreachable)?,
            None => false,
        };
        let undeliverable = refusal.as_deref() == Some("undeliverable");
        let delivered = ack_error.is_none() && !nobody && !undeliverable;
        if delivered {
            let media = message.media.as_ref().zip(file).map(|(media, reference)| {
                use base64::Engine;
                let sha256: String = base64::engine::general_purpose::STANDARD.decode(&reference.file_sha256).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect();
                serde_json::json!({
                    "mimeType": media.mime_type, "caption": media.caption, "fileName": media.file_name, "voiceNote": media.voice_note,
                    "size": reference.file_length, "sha256": sha256, "directPath": reference.direct_path,
                })
            });
            // Every copy is encrypted anew: the recipient's phone shows each one.
            let copy: i64 = redis.hincr(keys::simulator_copies(&device.device_id), &id, 1).await.map_err(unreachable)?;
            let entry = serde_json::json!({
                "session": self.session_id, "from": device.jid, "to": message.chat, "waMessageId": id, "copy": copy, "type": message.kind,
                "text": message.text, "location": message.location, "reaction": message.reaction, "quote": message.quoted, "mentions": message.mentions, "media": media,
                "at": shared::time::now_millis(),
            });
            server::record(&mut redis, &keys::simulator_delivered(), entry).await.map_err(unreachable)?;
        }
        let timings = &self.timings;
        let mut steps = vec![(ack_ms, BackendEvent::ServerAck { id: id.clone(), error: ack_error })];
        if delivered {
            // Each of the recipient's devices (the phone, a linked computer) receipts it.
            for _ in 0..2 {
                steps.push((timings.sim_delivered_ms, BackendEvent::Receipt { ids: vec![id.clone()], status: MessageStatus::Delivered }));
            }
            steps.push((timings.sim_read_ms, BackendEvent::Receipt { ids: vec![id], status: MessageStatus::Read }));
        } else if undeliverable {
            // The peer's device (a LID peer) cannot take it: a receipt of type `sent`.
            steps.push((timings.sim_delivered_ms.max(1), BackendEvent::Undeliverable { ids: vec![id] }));
        }
        for (after, event) in steps.into_iter().filter(|(after, _)| *after > 0) {
            let me = self.me.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let Some(me) = me.upgrade() else { return };
                // An ack travels on the connection that carried the message and is lost with it;
                // receipts wait on the server for the device's next login.
                let ack = matches!(event, BackendEvent::ServerAck { .. });
                let state = me.state();
                if !ack || (state.live && state.run == run) {
                    me.emit_if_open(&state, event);
                }
            });
        }
        Ok(())
    }

    async fn on_whatsapp(&self, jid: &str) -> Result<bool, SendFailure> {
        if self.logged_in_device().is_none() {
            return Err(SendFailure::NotConnected("not connected".into()));
        }
        if self.state().stalled {
            // An IQ into a silent socket: no answer comes.
            tokio::time::sleep(Duration::from_millis(self.timings.sim_keepalive_ms.min(5_000))).await;
            return Err(SendFailure::Failed("IQ request timed out".into()));
        }
        let mut redis = self.redis.clone();
        reachable(&mut redis).await.map_err(SendFailure::NotConnected)?;
        let failed = |e: redis::RedisError| SendFailure::Failed(format!("the usync query failed: {e}"));
        let _: i64 = redis.incr(keys::simulator_usync_queries(), 1).await.map_err(failed)?;
        let phone = jid.split('@').next().unwrap_or_default();
        let unregistered: bool = redis.sismember(keys::simulator_unregistered(), phone).await.map_err(failed)?;
        Ok(!unregistered)
    }

    async fn download(&self, media: &MediaRef, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        use base64::Engine;
        if self.logged_in_device().is_none() {
            return Err(crate::media::failure("not_connected", "not logged in"));
        }
        let mut redis = self.redis.clone();
        reachable(&mut redis).await.map_err(|e| crate::media::failure("failed", e))?;
        let found: Option<Vec<u8>> = redis.get(keys::simulator_media(&media.direct_path)).await.map_err(|e| crate::media::failure("failed", e.to_string()))?;
        let _: redis::RedisResult<i64> = redis.incr(keys::simulator_downloads(), 1).await;
        match found {
            Some(bytes) if bytes.len() as u64 > max_bytes => Err(crate::media::failure("too_large", format!("the file is larger than {max_bytes} bytes"))),
            Some(bytes) if base64::engine::general_purpose::STANDARD.encode(shared::secret::sha256(&bytes)) == media.file_sha256 => Ok(bytes),
            Some(_) => Err(crate::media::failure("failed", "the file does not match its hash")),
            None => Err(crate::media::failure("unavailable", "WhatsApp's media servers no longer have this file")),
        }
    }

    async fn typing(&self, chat: &str, typing: bool) -> Result<(), String> {
        if self.logged_in_device().is_none() {
            return Err("not logged in".into());
        }
        let state = if typing { "composing" } else { "paused" };
        let entry = serde_json::json!({ "session": self.session_id, "chat": chat, "state": state, "at": shared::time::now_millis() });
        server::record(&mut self.redis.clone(), &keys::simulator_chat_states(), entry).await.map_err(|e| e.to_string())
    }

    async fn groups(&self) -> Result<Vec<Group>, String> {
        tokio::time::sleep(Duration::from_millis(self.timings.sim_groups_fetch_ms)).await;
        match self.logged_in_device() {
            Some(device) => Ok(joined_groups(&device.phone, self.timings.sim_groups, self.timings.sim_contacts)),
            None => Err("not logged in".into()),
        }
    }

    async fn disconnect(&self) {
        if let Some(device) = self.close() {
            self.go_offline(&device.device_id).await;
        }
    }
}
