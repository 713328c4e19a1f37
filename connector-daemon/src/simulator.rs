//! A stand-in WhatsApp for tests and demos, behind the same [`Backend`] trait as the real one.
//!
//! Each client behaves like a WhatsApp Web socket with configurable timings: it connects, then
//! either logs in with its stored device or shows rotating QR codes in WhatsApp's
//! `ref,noiseKey,identityKey,advSecret` shape until they run out. The phone side is driven
//! through the Redis stream `gw:simulator:control`, one entry per action:
//!
//! | `action` | fields | effect |
//! |---|---|---|
//! | `scan` | `code`, `phone` | the phone scans a live QR code and links as `phone` |
//! | `enter_code` | `code`, `phone` | the phone types a pairing code issued for `phone` |
//! | `phone_logout` | `phone` | the phone unlinks every device of that number |
//! | `drop` | `session` | the session's connection drops (the daemon reconnects) |
//! | `replace` | `session` | another client takes over the session's stream |
//! | `ban` | `session`, `secs` | WhatsApp bans the number for a while (lifting in `secs`, when given) |
//! | `replace_client` | `client` | the server ends that client: another logged in with its device |
//! | `message` | `to`, `from`, … | the phone `from` sends the number `to` a message (see [`PhoneMessage`]) |
//!
//! A received message waits on the simulated server, per linked device, until the device's
//! client has stored it (its inbox answered) and `sim_inbound_ack_ms` more have passed; a client
//! that dies before then gets it again at its next login, as WhatsApp redelivers what was not
//! acknowledged. When the session reads what arrives, its read receipts are recorded under
//! `gw:simulator:read-receipts`; what it shows while writing (typing, paused), under
//! `gw:simulator:chat-states`.
//!
//! A sent message reaches the simulated server once per WhatsApp id (a resend with the same id
//! is acknowledged again, not delivered again) and is recorded under `gw:simulator:delivered`
//! for tests to read; the server acknowledges it after `sim_ack_ms`, and the recipient's phone
//! answers with delivery and read receipts after `sim_delivered_ms` and `sim_read_ms`.
//!
//! The simulated server's linked devices live in Redis, so a device unlinked while its session
//! was stopped is refused at the next connect, as WhatsApp does. Each simulated phone has an
//! address book of `sim_contacts` contacts, synced after every login as WhatsApp's app-state
//! sync does, and is in `sim_groups` groups, which the joined-groups query returns after
//! `sim_groups_fetch_ms`.
//!
//! While the key `gw:simulator:outage` exists the simulated server is unreachable: connections
//! fail and nothing can be unlinked. A wipe of a session's store (its directory) is local only,
//! as with WhatsApp: the device stays linked on the server until a client unlinks it.
//!
//! Like WhatsApp, the simulated server keeps one live client per device: a login while another
//! client of the same device is online (in any daemon) replaces that one, and the server
//! records it under `gw:simulator:replacements`. A gateway that never runs a session twice never
//! causes a record, so tests can tell.

use crate::backend::{Backend, BackendEvent, Client, Events, Identity, Inbox, SendFailure, receipts_by_chat};
use crate::config::{Config, SimulatorTimings};
use shared::directory::{Contact, Group, Participant, Role};
use async_trait::async_trait;
use base64::Engine;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};
use shared::inbox::Incoming;
use shared::media::{FetchError, MediaRef};
use shared::keys;
use shared::message::{Content, Location, Media, MessageStatus, Quote, Reaction, Sender};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The linked device a simulated session stores, as WhatsApp's store holds the real one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Device {
    device_id: String,
    jid: String,
    lid: String,
    phone: String,
    push_name: String,
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

pub struct Simulator {
    config: Config,
    redis: ConnectionManager,
    clients: Arc<Mutex<HashMap<String, Arc<SimClient>>>>,
}

impl Simulator {
    /// Starts following the control stream from its current end.
    pub async fn start(config: Config, redis: ConnectionManager, control: ConnectionManager) -> Arc<Simulator> {
        let simulator = Arc::new(Simulator { config, redis, clients: Arc::default() });
        tokio::spawn(simulator.clone().follow_control(control));
        simulator
    }

    fn clients(&self) -> Vec<Arc<SimClient>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    async fn follow_control(self: Arc<Self>, mut control: ConnectionManager) {
        let stream = keys::simulator_control();
        let mut last_id = loop {
            let newest: redis::RedisResult<StreamRangeReply> = control.xrevrange_count(&stream, "+", "-", 1).await;
            match newest {
                Ok(reply) => break reply.ids.first().map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
                Err(e) => tracing::warn!("simulator: cannot read the control stream: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let options = StreamReadOptions::default().block(1_000).count(100);
        loop {
            let read: redis::RedisResult<StreamReadReply> = control.xread_options(&[&stream], &[&last_id], &options).await;
            let entries = match read {
                Ok(reply) => reply.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!("simulator: cannot read the control stream: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for entry in entries {
                last_id = entry.id.clone();
                let fields: HashMap<String, String> =
                    entry.map.keys().filter_map(|name| Some((name.clone(), entry.get::<String>(name)?))).collect();
                self.act(&entry.id, &fields).await;
            }
        }
    }

    async fn act(&self, entry_id: &str, fields: &HashMap<String, String>) {
        let field = |name: &str| fields.get(name).map_or("", String::as_str);
        let (action, code, phone, session, client) = (field("action"), field("code"), field("phone"), field("session"), field("client"));
        tracing::info!(action, code, phone, session, "simulator: phone-side action");
        let by_session = || self.clients().into_iter().find(|c| c.session_id == session);
        match action {
            "scan" => match self.clients().into_iter().find(|c| c.shows_qr(code)) {
                Some(client) => client.pair(phone).await,
                None => tracing::warn!("simulator: no live QR code matches the scanned one"),
            },
            "enter_code" => match self.clients().into_iter().find(|c| c.issued_code(code, phone)) {
                Some(client) => client.pair(phone).await,
                None => tracing::warn!("simulator: no pairing code {code} was issued for {phone}"),
            },
            "phone_logout" => {
                let mut redis = self.redis.clone();
                let devices: HashMap<String, String> = redis.hgetall(keys::simulator_linked_devices()).await.unwrap_or_default();
                for (device, _) in devices.iter().filter(|(_, p)| *p == phone) {
                    let _: redis::RedisResult<i64> = redis.hdel(keys::simulator_linked_devices(), device).await;
                }
                for client in self.clients().into_iter().filter(|c| c.linked_phone().as_deref() == Some(phone)) {
                    client.end(BackendEvent::LoggedOut { reason: "the device was unlinked from the phone".into() });
                }
            }
            "drop" => by_session().into_iter().for_each(|c| c.end(BackendEvent::Disconnected { reason: "connection dropped".into() })),
            "replace" => by_session().into_iter().for_each(|c| c.end(BackendEvent::StreamReplaced)),
            "replace_client" => {
                self.clients().into_iter().filter(|c| c.token == client).for_each(|c| c.end(BackendEvent::StreamReplaced));
            }
            "ban" => {
                let lifts_in = field("secs").parse().ok().map(Duration::from_secs);
                by_session().into_iter().for_each(|c| c.end(BackendEvent::TemporaryBan { reason: "simulated ban".into(), lifts_in }));
            }
            "message" => self.phone_message(entry_id, fields).await,
            other => tracing::warn!("simulator: unknown action {other:?}"),
        }
    }
}

impl Simulator {
    /// A phone sends the number `to` a message: the server keeps it for each linked device of
    /// that number until the device's client acknowledges it. Every daemon's simulator follows
    /// the control stream; keeping it under the entry's id makes that one message.
    async fn phone_message(&self, entry_id: &str, fields: &HashMap<String, String>) {
        let mut message = match PhoneMessage::parse(fields) {
            Ok(message) => message,
            Err(e) => return tracing::warn!("simulator: ignoring a phone message: {e}"),
        };
        let mut redis = self.redis.clone();
        // A phone uploads a file before it sends the message that refers to it.
        if let Some(data) = message.fields.remove("data") {
            let kind = message.fields.get("type").cloned().unwrap_or_default();
            match base64::engine::general_purpose::STANDARD.decode(data) {
                Ok(bytes) => match upload(&mut redis, &kind, &bytes).await {
                    Ok(reference) => drop(message.fields.insert("media_ref".into(), serde_json::to_string(&reference).unwrap_or_default())),
                    Err(e) => return tracing::warn!("simulator: a phone could not upload its file: {e}"),
                },
                Err(e) => return tracing::warn!("simulator: ignoring a phone message whose data is not base64: {e}"),
            }
        }
        let devices: HashMap<String, String> = redis.hgetall(keys::simulator_linked_devices()).await.unwrap_or_default();
        let record = serde_json::to_string(&message).unwrap_or_default();
        for (device, _) in devices.iter().filter(|(_, phone)| **phone == message.to) {
            let _: redis::RedisResult<bool> = redis.hset_nx(keys::simulator_inbound(device), entry_id, &record).await;
        }
        for client in self.clients().into_iter().filter(|c| c.linked_phone().as_deref() == Some(message.to.as_str())) {
            client.arrivals.notify_one();
        }
    }
}

/// What a simulated phone sends, from the control entry's fields: `to` and `from` (phone
/// numbers), `id` (WhatsApp's id, random when absent), `type` (`text` by default, `location`,
/// `reaction`, `image`, `video`, `audio`, `document`, `sticker`, or anything else for a kind the
/// gateway does not read), `text`, `latitude`/`longitude`/`name`/`address`, `emoji`, `target`
/// and `target_from` (the WhatsApp id reacted to, and its author), `quote` and `quote_from` (a reply), `mentions`
/// (comma-separated phones), `mime`/`caption`/`file_name`/`size`/`voice_note` (media) and
/// `data` (the file, base64: uploaded to the simulated media servers first), `group`
/// (a group JID: the message is written there), `addressing` (`lid` when WhatsApp addresses the
/// sender by LID, giving the phone number beside it; else the phone number, with the LID).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PhoneMessage {
    to: String,
    from: String,
    id: String,
    fields: HashMap<String, String>,
}

impl PhoneMessage {
    fn parse(fields: &HashMap<String, String>) -> Result<PhoneMessage, String> {
        let phone = |name: &str| {
            fields.get(name).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).cloned().ok_or(format!("{name} must be a phone number"))
        };
        let id = fields.get("id").cloned().unwrap_or_else(|| format!("3A{:018X}", rand::random::<u128>() & ((1u128 << 72) - 1)));
        Ok(PhoneMessage { to: phone("to")?, from: phone("from")?, id, fields: fields.clone() })
    }

    /// The message as the receiving session's client gets it.
    fn incoming(&self, session_id: &str, me: &str) -> Incoming {
        let field = |name: &str| self.fields.get(name).filter(|v| !v.is_empty()).cloned();
        let (phone_jid, lid) = (format!("{}@s.whatsapp.net", self.from), lid_of(&self.from));
        let from = if field("addressing").as_deref() == Some("lid") { lid.clone() } else { phone_jid.clone() };
        let chat = field("group").unwrap_or_else(|| from.clone());
        let kind = field("type").unwrap_or_else(|| "text".to_owned());
        let known = ["text", "location", "reaction", "image", "video", "audio", "document", "sticker"];
        let mut content = Content::inbound(session_id, &chat, &from, Some(me), if known.contains(&kind.as_str()) { kind.as_str() } else { "unsupported" });
        content.sender = Some(Sender { phone_jid: Some(phone_jid), lid: Some(lid), push_name: Some(field("push_name").unwrap_or(format!("Push {}", self.from))) });
        content.text = field("text");
        content.quoted = field("quote").map(|wa_message_id| Quote { wa_message_id, participant: field("quote_from") });
        content.mentions = field("mentions").map(|m| m.split(',').map(|p| format!("{p}@s.whatsapp.net")).collect()).unwrap_or_default();
        let number = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
        match kind.as_str() {
            "location" => {
                content.location =
                    Some(Location { latitude: number("latitude").unwrap_or(0.0), longitude: number("longitude").unwrap_or(0.0), name: field("name"), address: field("address") });
            }
            "reaction" => {
                content.text = None;
                content.reaction = Some(Reaction {
                    wa_message_id: field("target").unwrap_or_default(),
                    message_id: None,
                    participant: field("target_from"),
                    emoji: field("emoji").unwrap_or_default(),
                });
            }
            "image" | "video" | "audio" | "document" | "sticker" => {
                content.text = None;
                content.media = Some(Media {
                    url: None,
                    mime_type: field("mime"),
                    caption: field("caption"),
                    file_name: field("file_name"),
                    size: number("size").map(|n| n as u64),
                    voice_note: field("voice_note").as_deref() == Some("true"),
                });
            }
            _ => {}
        }
        let media_ref = field("media_ref").and_then(|r| serde_json::from_str(&r).ok());
        Incoming { content, wa_id: self.id.clone(), media_ref }
    }
}

/// How long the simulated media servers keep a file.
const MEDIA_TTL_SECS: u64 = 86_400;

/// Puts a file on the simulated media servers, under a path of its hash, and answers the
/// reference a message carries to it. The simulated servers keep files as they are: the
/// encrypted hash is the plain one.
async fn upload(redis: &mut ConnectionManager, kind: &str, file: &[u8]) -> redis::RedisResult<MediaRef> {
    let sha = shared::secret::sha256(file);
    let path = format!("/v/t62.{kind}/{}", shared::secret::sha256_hex(file));
    let () = redis.set_ex(keys::simulator_media(&path), file, MEDIA_TTL_SECS).await?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(MediaRef {
        kind: kind.to_owned(),
        direct_path: path,
        media_key: b64(&rand::random::<[u8; 32]>()),
        file_sha256: b64(&sha),
        file_enc_sha256: b64(&sha),
        file_length: file.len() as u64,
    })
}

/// A simulated phone's LID: fixed per number, as WhatsApp's is.
fn lid_of(phone: &str) -> String {
    format!("9{phone}@lid")
}

/// A control entry id (`<ms>-<seq>`) as a number pair, to keep received messages in order.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[async_trait]
impl Backend for Simulator {
    async fn connect(&self, session_id: &str, store: &Path, events: Events, inbox: Arc<dyn Inbox>) -> Result<Arc<dyn Client>, String> {
        let client = Arc::new(SimClient {
            session_id: session_id.to_owned(),
            token: ulid::Ulid::new().to_string(),
            timings: self.config.simulator.clone(),
            device_file: store.join(DEVICE_FILE),
            redis: self.redis.clone(),
            events,
            inbox,
            arrivals: Notify::new(),
            state: Mutex::default(),
            clients: self.clients.clone(),
        });
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(session_id.to_owned(), client.clone());
        tokio::spawn(client.clone().run());
        Ok(client)
    }
}

/// The simulated device, in the session's store.
const DEVICE_FILE: &str = "simulator-device.json";

/// Whether the simulated server answers: not while a test holds `gw:simulator:outage`, nor
/// while its state in Redis is out of reach.
async fn reachable(redis: &mut ConnectionManager) -> Result<(), String> {
    match redis.exists::<_, bool>(keys::simulator_outage()).await {
        Ok(false) => Ok(()),
        Ok(true) => Err("the simulated server is unreachable (outage)".to_owned()),
        Err(e) => Err(format!("the simulated server is unreachable: {e}")),
    }
}

/// How long a client's online record lasts unless refreshed, and how often it is refreshed.
const ONLINE_TTL_MS: u64 = 1_000;
const ONLINE_REFRESH: Duration = Duration::from_millis(300);

/// Refreshes a client's online record while it is still that client's (or lapsed).
const REFRESH_ONLINE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1";

const DROP_ONLINE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

fn read_device(file: &PathBuf) -> Option<Device> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

#[derive(Default)]
struct SimState {
    socket_up: bool,
    closed: bool,
    qr: Option<String>,
    /// The last pairing code issued, and for which phone.
    pairing_code: Option<(String, String)>,
    device: Option<Device>,
}

struct SimClient {
    session_id: String,
    /// This client among all the simulated server's clients, in every daemon.
    token: String,
    timings: SimulatorTimings,
    device_file: PathBuf,
    redis: ConnectionManager,
    events: Events,
    inbox: Arc<dyn Inbox>,
    /// Rung when a message for this client's number arrived.
    arrivals: Notify,
    state: Mutex<SimState>,
    clients: Arc<Mutex<HashMap<String, Arc<SimClient>>>>,
}

impl SimClient {
    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Emits while the client is open; the state lock keeps events in the order they happened.
    fn emit_if_open(&self, state: &SimState, event: BackendEvent) -> bool {
        !state.closed && self.events.send(event).is_ok()
    }

    /// Logged in: the phone's address book follows, as app-state sync delivers it.
    fn logged_in(&self, state: &SimState, device: &Device) -> bool {
        self.emit_if_open(state, BackendEvent::Connected(device.identity()))
            && self.emit_if_open(state, BackendEvent::Contacts(address_book(self.timings.sim_contacts)))
    }

    async fn run(self: Arc<Self>) {
        let timings = self.timings.clone();
        tokio::time::sleep(Duration::from_millis(timings.sim_connect_ms)).await;
        if let Err(reason) = reachable(&mut self.redis.clone()).await {
            let mut state = self.state();
            self.emit_if_open(&state, BackendEvent::Disconnected { reason });
            state.closed = true;
            return;
        }
        self.state().socket_up = true;
        if let Some(device) = read_device(&self.device_file) {
            let mut redis = self.redis.clone();
            // The simulated server's state lives in Redis: without it the server is unreachable,
            // which is a failed connection, not an unlinked device.
            let linked: redis::RedisResult<bool> = redis.hexists(keys::simulator_linked_devices(), &device.device_id).await;
            let mut state = self.state();
            match linked {
                Ok(true) => {
                    if self.logged_in(&state, &device) {
                        self.go_online(&device);
                        state.device = Some(device);
                    }
                }
                Ok(false) => {
                    self.emit_if_open(&state, BackendEvent::LoggedOut { reason: "the device was unlinked from the phone".into() });
                }
                Err(e) => {
                    self.emit_if_open(&state, BackendEvent::Disconnected { reason: format!("the simulated server is unreachable: {e}") });
                }
            }
            if state.device.is_none() {
                state.closed = true;
            }
            return;
        }
        for round in 0..timings.sim_qr_count {
            let valid_for = Duration::from_millis(if round == 0 { timings.sim_first_qr_ms } else { timings.sim_next_qr_ms });
            {
                let mut state = self.state();
                if state.device.is_some() {
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
        let mut state = self.state();
        if state.device.is_none() {
            state.qr = None;
            self.emit_if_open(&state, BackendEvent::QrExhausted);
            state.closed = true;
        }
    }

    fn shows_qr(&self, code: &str) -> bool {
        let state = self.state();
        !state.closed && state.device.is_none() && state.qr.as_deref() == Some(code)
    }

    fn issued_code(&self, code: &str, phone: &str) -> bool {
        let typed: String = code.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_uppercase();
        let state = self.state();
        !state.closed && state.device.is_none() && state.pairing_code.as_ref().is_some_and(|(c, p)| *c == typed && p == phone)
    }

    fn linked_phone(&self) -> Option<String> {
        self.state().device.as_ref().map(|d| d.phone.clone())
    }

    /// The phone accepted: store the device, register it server-side, and log in.
    async fn pair(self: &Arc<Self>, phone: &str) {
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
        let mut redis = self.redis.clone();
        let _: redis::RedisResult<i64> = redis.hset(keys::simulator_linked_devices(), &device.device_id, phone).await;
        let mut state = self.state();
        state.qr = None;
        state.pairing_code = None;
        if self.emit_if_open(&state, BackendEvent::Paired(device.identity())) && self.logged_in(&state, &device) {
            self.go_online(&device);
        }
        state.device = Some(device);
    }

    /// Logged in: the server keeps this client's record and hands it what arrived for it.
    fn go_online(self: &Arc<Self>, device: &Device) {
        tokio::spawn(self.clone().stay_online(device.device_id.clone()));
        tokio::spawn(self.clone().receive(device.clone()));
    }

    /// Hands the client what arrived for its device, oldest first, a batch at a time, until it
    /// closes. A batch stays on the server until the client stored it and the acknowledgement
    /// came through (`sim_inbound_ack_ms` later).
    async fn receive(self: Arc<Self>, device: Device) {
        let mut redis = self.redis.clone();
        let key = keys::simulator_inbound(&device.device_id);
        while !self.state().closed {
            let pending: redis::RedisResult<HashMap<String, String>> = redis.hgetall(&key).await;
            let Ok(pending) = pending else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut pending: Vec<(String, PhoneMessage)> =
                pending.into_iter().filter_map(|(entry, record)| Some((entry, serde_json::from_str(&record).ok()?))).collect();
            if pending.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.arrivals.notified()).await;
                continue;
            }
            pending.sort_by_key(|(entry, _)| entry_order(entry));
            pending.truncate(self.timings.sim_inbound_batch.max(1));
            let batch: Vec<Incoming> = pending.iter().map(|(_, m)| m.incoming(&self.session_id, &device.jid)).collect();
            let stored = match self.inbox.store(batch.clone()).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::warn!(session = %self.session_id, "simulator: the client did not store received messages: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tokio::time::sleep(Duration::from_millis(self.timings.sim_inbound_ack_ms)).await;
            if self.state().closed {
                return;
            }
            let entries: Vec<&str> = pending.iter().map(|(entry, _)| entry.as_str()).collect();
            let _: redis::RedisResult<i64> = redis.hdel(&key, &entries).await;
            if stored.auto_read {
                self.mark_read(&mut redis, &batch).await;
            }
        }
    }

    /// Read receipts for received messages, per chat and sender, as WhatsApp Web sends them.
    async fn mark_read(&self, redis: &mut ConnectionManager, batch: &[Incoming]) {
        let read = batch.iter().map(|Incoming { content, wa_id, .. }| ((content.chat.clone(), content.from.clone().unwrap_or_default()), wa_id.clone()));
        for ((chat, sender), ids) in receipts_by_chat(read) {
            let record = serde_json::json!({ "session": self.session_id, "chat": chat, "sender": sender, "ids": ids, "at": shared::time::now_millis() });
            let sent: redis::RedisResult<i64> = redis.rpush(keys::simulator_read_receipts(), record.to_string()).await;
            if sent.is_ok() {
                self.inbox.read(&chat, &sender, ids).await;
            }
        }
    }

    /// The simulated server's record of this client while it is logged in, refreshed until the
    /// client closes. Taking the device's record from another live client replaces that one.
    async fn stay_online(self: Arc<Self>, device_id: String) {
        let mut redis = self.redis.clone();
        let key = keys::simulator_online(&device_id);
        let previous: Option<String> = redis::cmd("SET")
            .arg(&key).arg(&self.token).arg("PX").arg(ONLINE_TTL_MS).arg("GET")
            .query_async(&mut redis)
            .await
            .unwrap_or(None);
        if let Some(previous) = previous.filter(|p| *p != self.token) {
            tracing::warn!(session = %self.session_id, "simulator: a second client logged in with a device that is online; replacing the first");
            let record = serde_json::json!({
                "device": device_id, "session": self.session_id, "replaced": previous, "by": self.token, "at": shared::time::now_millis(),
            });
            let _: redis::RedisResult<i64> = redis.lpush(keys::simulator_replacements(), record.to_string()).await;
            let _: redis::RedisResult<String> =
                redis.xadd(keys::simulator_control(), "*", &[("action", "replace_client"), ("client", previous.as_str())]).await;
        }
        loop {
            tokio::time::sleep(ONLINE_REFRESH).await;
            if self.state().closed {
                return;
            }
            let refreshed: redis::RedisResult<i64> =
                redis::cmd("EVAL").arg(REFRESH_ONLINE).arg(1).arg(&key).arg(&self.token).arg(ONLINE_TTL_MS).query_async(&mut redis).await;
            if refreshed == Ok(0) {
                return;
            }
        }
    }

    /// The device's record goes with the client that holds it.
    async fn go_offline(&self) {
        let Some(device) = self.state().device.clone() else { return };
        let mut redis = self.redis.clone();
        let _: redis::RedisResult<i64> =
            redis::cmd("EVAL").arg(DROP_ONLINE).arg(1).arg(keys::simulator_online(&device.device_id)).arg(&self.token).query_async(&mut redis).await;
    }

    /// The server ends this client with a final event.
    fn end(&self, event: BackendEvent) {
        let mut state = self.state();
        self.emit_if_open(&state, event);
        state.closed = true;
    }

    fn close(&self) {
        self.state().closed = true;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(&self.session_id).is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), self)) {
            clients.remove(&self.session_id);
        }
    }
}

#[async_trait]
impl Client for SimClient {
    async fn pair_with_code(&self, phone: &str) -> Result<String, String> {
        for _ in 0..500 {
            {
                let mut state = self.state();
                if state.closed {
                    return Err("the connection closed".into());
                }
                if state.device.is_some() {
                    return Err("the session is already paired".into());
                }
                if state.socket_up {
                    let code = pairing_code();
                    state.pairing_code = Some((code.clone(), phone.to_owned()));
                    return Ok(code);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("the socket did not open".into())
    }

    async fn logout(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        let device = self.state().device.clone();
        let unlinked = match (reachable(&mut redis).await, device) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err("not logged in".to_owned()),
            (Ok(()), Some(device)) => {
                let removed: redis::RedisResult<i64> = redis.hdel(keys::simulator_linked_devices(), &device.device_id).await;
                removed.map(drop).map_err(|e| format!("the simulated server did not answer: {e}"))
            }
        };
        self.go_offline().await;
        self.close();
        unlinked
    }

    async fn send(&self, wa_id: &str, message: &Content, file: Option<&[u8]>) -> Result<Option<MediaRef>, SendFailure> {
        let device = {
            let state = self.state();
            match (&state.device, state.closed) {
                (Some(device), false) => device.clone(),
                _ => return Err(SendFailure::NotConnected("not logged in".into())),
            }
        };
        let mut redis = self.redis.clone();
        reachable(&mut redis).await.map_err(SendFailure::NotConnected)?;
        let id = wa_id.to_owned();
        let unreachable = |e: redis::RedisError| SendFailure::NotConnected(format!("the simulated server is unreachable: {e}"));
        let reference = match (&message.media, file) {
            (Some(_), Some(file)) => Some(upload(&mut redis, &message.kind, file).await.map_err(unreachable)?),
            (Some(_), None) => return Err(SendFailure::Rejected("a media message needs its file".into())),
            (None, _) => None,
        };
        let media = message.media.as_ref().zip(reference.as_ref()).map(|(media, reference)| {
            serde_json::json!({
                "mimeType": media.mime_type, "caption": media.caption, "fileName": media.file_name, "voiceNote": media.voice_note,
                "size": reference.file_length, "sha256": shared::secret::sha256_hex(file.unwrap_or_default()), "directPath": reference.direct_path,
            })
        });
        let first_time: bool = redis.sadd(keys::simulator_delivered_ids(&device.device_id), &id).await.map_err(unreachable)?;
        if first_time {
            let record = serde_json::json!({
                "session": self.session_id, "from": device.jid, "to": message.chat, "waMessageId": id, "type": message.kind,
                "text": message.text, "location": message.location, "reaction": message.reaction, "quote": message.quoted, "mentions": message.mentions, "media": media,
                "at": shared::time::now_millis(),
            });
            let _: i64 = redis.rpush(keys::simulator_delivered(), record.to_string()).await.map_err(unreachable)?;
        }
        let timings = &self.timings;
        let steps = [
            (timings.sim_ack_ms, BackendEvent::ServerAck { id: id.clone(), error: None }),
            (timings.sim_delivered_ms, BackendEvent::Receipt { ids: vec![id.clone()], status: MessageStatus::Delivered }),
            (timings.sim_read_ms, BackendEvent::Receipt { ids: vec![id], status: MessageStatus::Read }),
        ];
        for (after, event) in steps.into_iter().filter(|(after, _)| *after > 0) {
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let _ = events.send(event);
            });
        }
        Ok(reference)
    }

    async fn download(&self, media: &MediaRef, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        if self.state().device.is_none() {
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
        if self.state().device.is_none() {
            return Err("not logged in".into());
        }
        let state = if typing { "composing" } else { "paused" };
        let record = serde_json::json!({ "session": self.session_id, "chat": chat, "state": state, "at": shared::time::now_millis() });
        let mut redis = self.redis.clone();
        redis.rpush::<_, _, i64>(keys::simulator_chat_states(), record.to_string()).await.map(drop).map_err(|e| e.to_string())
    }

    async fn groups(&self) -> Result<Vec<Group>, String> {
        tokio::time::sleep(Duration::from_millis(self.timings.sim_groups_fetch_ms)).await;
        let state = self.state();
        match (&state.device, state.closed) {
            (Some(device), false) => Ok(joined_groups(&device.phone, self.timings.sim_groups, self.timings.sim_contacts)),
            _ => Err("not logged in".into()),
        }
    }

    async fn disconnect(&self) {
        self.close();
        self.go_offline().await;
    }
}

fn contact_phone(i: u32) -> String {
    format!("62899{i:07}")
}

/// A simulated phone's address book: `count` contacts, each with a saved name and a push name.
fn address_book(count: u32) -> Vec<Contact> {
    (1..=count)
        .map(|i| Contact {
            jid: format!("{}@s.whatsapp.net", contact_phone(i)),
            phone_number: Some(contact_phone(i)),
            name: Some(format!("Contact {i}")),
            push_name: Some(format!("Push {i}")),
            updated_at: shared::time::now_millis(),
        })
        .collect()
}

/// The groups `phone` is in: `phone` created each one; the first contacts are members, the
/// first of them an admin.
fn joined_groups(phone: &str, count: u32, contacts: u32) -> Vec<Group> {
    let member = |jid: String, phone: String, role| Participant { jid, phone_number: Some(phone), role };
    (1..=count)
        .map(|i| {
            let mut participants = vec![member(format!("{phone}@s.whatsapp.net"), phone.to_owned(), Role::Superadmin)];
            participants.extend((1..=contacts.min(4)).map(|c| {
                let role = if c == 1 { Role::Admin } else { Role::Member };
                member(format!("{}@s.whatsapp.net", contact_phone(c)), contact_phone(c), role)
            }));
            Group {
                jid: format!("1203630000000{i:05}@g.us"),
                subject: format!("Group {i}"),
                description: Some(format!("Simulated group {i}")),
                owner: Some(format!("{phone}@s.whatsapp.net")),
                created_at: Some(1_700_000_000_000 + i as i64 * 1000),
                size: participants.len() as u32,
                participants,
                updated_at: shared::time::now_millis(),
            }
        })
        .collect()
}

/// WhatsApp's QR payload: `ref,noiseKey,identityKey,advSecret` (the three keys base64).
fn qr_code() -> String {
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode((0..n).map(|_| rand::random::<u8>()).collect::<Vec<_>>());
    format!("2@{},{},{},{}", b64(48), b64(32), b64(32), b64(32))
}

/// WhatsApp's pairing-code alphabet: no 0, O, I or U, so codes read unambiguously.
fn pairing_code() -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTVWXYZ";
    (0..8).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn qr_codes_have_whatsapps_four_part_shape() {
        let code = super::qr_code();
        let parts: Vec<_> = code.split(',').collect();
        assert_eq!(parts.len(), 4);
        assert!(parts[0].starts_with("2@"));
        assert_ne!(code, super::qr_code());
    }

    #[test]
    fn pairing_codes_are_eight_unambiguous_characters() {
        let code = super::pairing_code();
        assert_eq!(code.len(), 8);
        assert!(!code.contains(['0', 'O', 'I', 'U']));
    }
}
