//! A stand-in WhatsApp for tests and demos, behind the same [`Backend`] trait as the real one,
//! and as strict as WhatsApp where the gateway could be caught out: a test that passes only
//! because the simulator is kinder than WhatsApp proves nothing.
//!
//! Each client ([`client`]) behaves like a whatsapp-rust client with its own reconnect off: it
//! connects (its socket takes `sim_connect_ms`), then either logs in with its stored device or
//! shows rotating QR codes in WhatsApp's `ref,noiseKey,identityKey,advSecret` shape until they
//! run out. The phone side and the server's moods are driven through the Redis stream
//! `gw:simulator:control`, one entry per action:
//!
//! | `action` | fields | effect |
//! |---|---|---|
//! | `scan` | `code`, `phone` | the phone scans a live QR code and links as `phone` |
//! | `enter_code` | `code`, `phone` | the phone types a phone code issued for `phone` (valid `sim_pairing_code_ms` on the connection that asked for it) |
//! | `phone_logout` | `phone` | the phone unlinks every device of that number |
//! | `refresh_code` | `session` | the server voids the phone code outstanding on the session's connection and asks for a new one |
//! | `drop` | `session` | the session's connection drops (the client may connect again) |
//! | `stall` | `session` | the socket goes silent (half-open): sends go nowhere, no answer comes, and after `sim_keepalive_ms` the keepalive ends the connection |
//! | `delay_acks` | `session`, `ms` | the server takes `ms` to acknowledge the session's messages (`0`: it never does, as `SIM_ACK_MS=0`) |
//! | `unregister`, `register` | `phone` | the number leaves (joins) WhatsApp: usync does not find it, and a message to it is acknowledged and delivered to nobody |
//! | `refuse_sends` | `chat`, `error` | sends to `chat` fail while connected, as the library reports each: `forbidden` (an IQ refusal: not a participant), `encryption`, `not_logged_in`, `timeout`, `ack:<code>` (the server's acknowledgement refuses it with that code), or `undeliverable` (taken, then a receipt of type `sent`: the peer's device cannot take it); an empty `error` ends it |
//! | `stream_error` | `session`, `code` | the server sends a stream error: `515` restarts the stream, `429` rate-limits the client (it must back off far longer), `503` closes it; any other code (or none) is informational and the connection stays |
//! | `replace` | `session` | another client takes over the session's stream |
//! | `ban` | `session`, `secs` | WhatsApp bans the number for a while (lifting in `secs`, when given) |
//! | `replace_client` | `client` | the server ends that client: another logged in with its device |
//! | `message` | `to`, `from`, … | the phone `from` sends the number `to` a message, a status post, an edit or a deletion, readable or not (see [`phone::PhoneMessage`]) |
//!
//! As WhatsApp does:
//! - After a pairing the server restarts the stream (515): the client must log in again, and
//!   only the same client, which remembers in memory that the first full sync is due, gets the
//!   profile name and the address book; a new client does not (as a Business account's).
//! - A phone-code request before the socket is up fails at once ("not connected"). When the
//!   QR codes run out while a phone code issued on the connection is still valid, the socket
//!   stays up for it (`QrExhausted { code_outstanding: true }`); any new connection voids it.
//! - Every login announces the number online (`available`), and so does the first sync after
//!   a pairing: what sessions announce is recorded under `gw:simulator:presence`.
//! - An acknowledgement travels on the connection that carried the message: one that drops
//!   first loses it. Receipts wait on the server for the next login.
//!
//! A received message waits on the simulated server, per linked device, until the device's
//! client has stored it (its inbox answered) and `sim_inbound_ack_ms` more have passed; a client
//! that dies before then gets it again at its next login, as WhatsApp redelivers what was not
//! acknowledged. When the session reads what arrives, its read receipts are recorded under
//! `gw:simulator:read-receipts`; what it shows while writing (typing, paused), under
//! `gw:simulator:chat-states`.
//!
//! Every copy of a sent message that reaches the simulated server is delivered and recorded
//! under `gw:simulator:delivered` (with `copy`: a resend is encrypted anew, and the recipient's
//! phone shows it again); the server acknowledges it after `sim_ack_ms`, and the recipient's
//! phone answers with delivery and read receipts after `sim_delivered_ms` and `sim_read_ms`.
//! Sessions' usync queries are counted under `gw:simulator:usync-queries`.
//!
//! The simulated server's linked devices live in Redis, so a device unlinked while its session
//! was stopped is refused at the next connect, as WhatsApp does. Each simulated phone has an
//! address book of `sim_contacts` contacts and is in `sim_groups` groups, which the
//! joined-groups query returns after `sim_groups_fetch_ms`.
//!
//! While the key `gw:simulator:outage` exists the simulated server is unreachable: connections
//! fail and nothing can be unlinked. A wipe of a session's store (its directory) is local only,
//! as with WhatsApp: the device stays linked on the server until a client unlinks it.
//!
//! Like WhatsApp, the simulated server keeps one live client per device: a login while another
//! client of the same device is online (in any daemon) replaces that one, and the server
//! records it under `gw:simulator:replacements`. A gateway that never runs a session twice never
//! causes a record, so tests can tell.

mod client;
mod phone;
mod server;

use crate::backend::{Backend, BackendEvent, Cause, Client, Events, Inbox};
use crate::config::Config;
use async_trait::async_trait;
use client::{DEVICE_FILE, SimClient};
use phone::PhoneMessage;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use shared::keys;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
            "drop" => by_session().into_iter().for_each(|c| c.drop_connection("connection dropped", Cause::Lost)),
            "stream_error" => {
                let cause = match field("code") {
                    "515" => Cause::Restart,
                    "429" => Cause::RateLimited,
                    "503" => Cause::Lost,
                    other => return tracing::info!(code = other, "simulator: an informational stream error; the connection stays"),
                };
                let reason = format!("stream error {}", field("code"));
                by_session().into_iter().for_each(|c| c.drop_connection(&reason, cause));
            }
            "refresh_code" => by_session().into_iter().for_each(|c| c.void_code()),
            "stall" => by_session().into_iter().for_each(|c| c.stall()),
            "delay_acks" => {
                let ms = field("ms").parse().unwrap_or(0);
                by_session().into_iter().for_each(|c| c.delay_acks(ms));
            }
            "unregister" | "register" => {
                let mut redis = self.redis.clone();
                let key = keys::simulator_unregistered();
                let changed: redis::RedisResult<i64> = if action == "unregister" { redis.sadd(key, phone).await } else { redis.srem(key, phone).await };
                if let Err(e) = changed {
                    tracing::warn!("simulator: cannot {action} {phone}: {e}");
                }
            }
            "refuse_sends" => {
                let (mut redis, chat, error) = (self.redis.clone(), field("chat"), field("error"));
                let changed: redis::RedisResult<i64> = match error {
                    "" => redis.hdel(keys::simulator_refusals(), chat).await,
                    error => redis.hset(keys::simulator_refusals(), chat, error).await,
                };
                if let Err(e) = changed {
                    tracing::warn!("simulator: cannot set how sends to {chat} are answered: {e}");
                }
            }
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
            match base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data) {
                Ok(bytes) => match server::upload(&mut redis, &kind, &bytes).await {
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

#[async_trait]
impl Backend for Simulator {
    async fn connect(&self, session_id: &str, store: &Path, events: Events, inbox: Arc<dyn Inbox>) -> Result<Arc<dyn Client>, String> {
        let timings = self.config.simulator.clone();
        let client = SimClient::new(session_id, timings, store.join(DEVICE_FILE), self.redis.clone(), events, inbox, self.clients.clone());
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(session_id.to_owned(), client.clone());
        client.start();
        Ok(client)
    }
}
