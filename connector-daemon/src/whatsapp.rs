//! The real backend: WhatsApp Web multi-device through `whatsapp-rust`, one client per session,
//! each with its own SQLite store under the session's data directory.
//!
//! The library's own reconnect is switched off: the supervisor owns reconnects, so that every
//! drop is reported, backed off and counted the same way for every backend. The client is kept
//! across them and run again ([`Client::reconnect`]): what the library holds in memory carries
//! over, notably the flag a pairing arms so that the first login runs the full app-state sync
//! (the contacts), which a new client would not. With its reconnect off, the library's run loop
//! ends silently after the restart WhatsApp asks for once paired (stream error 515), a rate
//! limit (429), a dead socket found by the keepalive or a failed connect: the end of the loop is
//! the one signal, and [`watch`] reports it with its cause.
//!
//! Events are taken on the library's dispatch path (a handler called synchronously, possibly
//! from several tasks at once for acks and receipts), and never dropped.
//!
//! Received messages go through the library's inbound durability hook: WhatsApp's server is
//! acknowledged only once the session's inbox stored them, and redelivers them otherwise.

use crate::backend::{Backend, BackendEvent, Cause, Client, Events, Identity, Inbox, SendFailure, receipts_by_chat};
use crate::config::Config;
use async_trait::async_trait;
use shared::directory::{Contact, Group, Participant, Role};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use shared::inbox::{Change, Incoming};
use whatsapp_rust::wacore_binary::JidExt;
use shared::media::{FetchError, MediaRef};
use std::io::{Cursor, Seek, SeekFrom, Write};
use whatsapp_rust::ErrorChainExt;
use whatsapp_rust::download::{DownloadWriter, Downloadable, MediaType};
use whatsapp_rust::upload::{UploadOptions, UploadResponse};
use shared::message::{Content, Location, Media, MessageStatus, Quote, Reaction, Sender, UNDECRYPTABLE};
use whatsapp_rust::wacore::proto_helpers::build_quote_context_with_info;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use whatsapp_rust::Freshness;
use whatsapp_rust::features::PresenceStatus;
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::InboundDurabilityHook;
use whatsapp_rust::prelude::{Bot, Event, EventHandler, InboundMessage, Jid, MessageExt, SendError, SendOptions};
use whatsapp_rust::types::presence::ReceiptType;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::store::{SqliteStore, SqliteStoreConfig};
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::ConnectFailureReason;
use whatsapp_rust::wacore::iq::devices::RemoveCompanionDeviceSpec;
use std::path::Path;

const STORE_FILE: &str = "whatsapp.db";

/// How long opening a session's store waits for a client that still holds it (one closing).
const STORE_LOCK_WAIT: Duration = Duration::from_secs(10);

pub struct WhatsApp {
    config: Config,
}

impl WhatsApp {
    /// The backend, once the data directory is fit for the session stores (see [`check_data_dir`]).
    pub fn new(config: Config) -> Result<WhatsApp, String> {
        check_data_dir(&config.data_dir)?;
        Ok(WhatsApp { config })
    }
}

/// A session store's SQLite connection holds the file's lock for as long as it is open
/// (`locking_mode = EXCLUSIVE`), waiting up to `lock_wait` for it. So a client still alive after
/// its daemon lost the session (flushing its Signal state on the way out) and the new holder's
/// client never both write the store: the new one opens it only once the old one let go. And WAL
/// keeps its index in the connection's memory: no shared-memory file, which network filesystems
/// cannot hold.
fn store_config(lock_wait: Duration) -> SqliteStoreConfig {
    let config = SqliteStoreConfig { busy_timeout: lock_wait, ..SqliteStoreConfig::default() };
    let wait_ms = lock_wait.as_millis();
    config.with_connection_init(move |connection| {
        use diesel::connection::SimpleConnection;
        connection.batch_execute(&format!("PRAGMA busy_timeout = {wait_ms}; PRAGMA locking_mode = EXCLUSIVE;")).map_err(Into::into)
    })
}

/// Waits up to `within` for no other client to hold the store at `path` (one closing lets go
/// within moments), asking without blocking each time: the library's pool, finding it held,
/// would keep trying for half a minute, holding up the session's supervisor meanwhile.
async fn wait_for_store(path: &str, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let probe = path.to_owned();
        match tokio::task::spawn_blocking(move || store_is_free(&probe)).await.map_err(|e| e.to_string())? {
            Ok(()) => return Ok(()),
            Err(held) if tokio::time::Instant::now() >= deadline => return Err(held),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether no other client holds the store at `path`, asked without waiting.
fn store_is_free(path: &str) -> Result<(), String> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    if !Path::new(path).exists() {
        return Ok(());
    }
    let mut probe = diesel::SqliteConnection::establish(path).map_err(|e| format!("cannot open the session store: {e}"))?;
    probe
        .batch_execute("PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE; SELECT count(*) FROM sqlite_master;")
        .map_err(|e| format!("the session store is held by another client of the session (one still closing?): {e}"))
}

/// Refuses a data directory on a network filesystem (NFS, SMB/CIFS, CephFS, 9P, AFS, a FUSE
/// mount …): the session stores are SQLite files, whose locks such filesystems do not keep
/// reliably, so two machines could write one store. Share a data directory between daemons on
/// one machine only.
pub fn check_data_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| format!("{} is no usable path", dir.display()))?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a statfs to fill, both alive for the call.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(format!("cannot read the filesystem of {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    match network_filesystem(stat.f_type as i64) {
        Some(kind) => Err(format!(
            "the data directory {} is on a network filesystem ({kind}): the session stores are SQLite files, whose locks it does not keep; use a local disk",
            dir.display()
        )),
        None => Ok(()),
    }
}

/// The network filesystem a `statfs` magic number names, if it is one.
fn network_filesystem(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x00C3_6400 => "CephFS",
        0x0102_1997 => "9P",
        0x5346_414F => "AFS",
        0x0BD0_0BD0 => "Lustre",
        0x0116_1970 => "GFS2",
        0x7461_636F => "OCFS2",
        0x6573_5546 => "FUSE",
        _ => return None,
    })
}

#[async_trait]
impl Backend for WhatsApp {
    async fn connect(&self, session_id: &str, dir: &Path, events: Events, inbox: Arc<dyn Inbox>) -> Result<Arc<dyn Client>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(STORE_FILE);
        let path = path.to_string_lossy();
        wait_for_store(&path, STORE_LOCK_WAIT).await?;
        let store = SqliteStore::with_config(&path, store_config(STORE_LOCK_WAIT))
            .await
            .map_err(|e| format!("cannot open the session store (is another client of the session still running?): {e}"))?;
        let forwarder = Arc::new(Forwarder {
            events,
            client: OnceLock::new(),
            run: Mutex::default(),
            session_id: session_id.to_owned(),
            inbox: inbox.clone(),
        });
        let transport = match &self.config.whatsapp_url {
            Some(url) => TokioWebSocketTransportFactory::new().with_url(url),
            None => TokioWebSocketTransportFactory::new(),
        };
        let bot = Bot::builder()
            .with_backend(store)
            .with_transport_factory(transport)
            .with_event_handler(SharedForwarder(forwarder.clone()))
            .with_inbound_durability_hook(Keeper { session_id: session_id.to_owned(), inbox })
            .skip_history_sync()
            .build()
            .await
            .map_err(|e| format!("cannot build the WhatsApp client: {e}"))?;
        let client = bot.client();
        client.enable_auto_reconnect.store(false, Ordering::Relaxed);
        let _ = forwarder.client.set(Arc::downgrade(&client));
        forwarder.begin_run(client.stats().reconnect_errors);
        tokio::spawn(watch(forwarder.clone(), client.clone(), bot.spawn()));
        Ok(Arc::new(WaClient { client, forwarder }))
    }
}

/// Waits for one run of the library's connection loop to end and reports why, unless the end
/// was asked for or a final event already said it (logged out, replaced, refused, banned, the
/// QR codes ran out).
async fn watch(forwarder: Arc<Forwarder>, client: Arc<whatsapp_rust::Client>, run: impl Future<Output = ()>) {
    run.await;
    let (paired, reason, backoff_at_start) = {
        let mut run = forwarder.run();
        run.ended = true;
        if run.done {
            return;
        }
        (run.paired, run.reason.take(), run.backoff_at_start)
    };
    // The library adds five to its backoff counter on a rate limit (and nothing else moves it
    // while its reconnect is off).
    let rate_limited = client.stats().reconnect_errors >= backoff_at_start + 5;
    let (cause, reason) = if paired {
        (Cause::Restart, "WhatsApp restarted the stream after the pairing".to_owned())
    } else if rate_limited {
        (Cause::RateLimited, "rate limited by WhatsApp (stream error 429)".to_owned())
    } else {
        (Cause::Lost, reason.unwrap_or_else(|| "the connection to WhatsApp ended".to_owned()))
    };
    let _ = forwarder.events.send(BackendEvent::Disconnected { reason, cause });
}

struct WaClient {
    client: Arc<whatsapp_rust::Client>,
    forwarder: Arc<Forwarder>,
}

#[async_trait]
impl Client for WaClient {
    async fn reconnect(&self) -> Result<(), String> {
        {
            let mut run = self.forwarder.run();
            if run.done {
                return Err("the client was closed".to_owned());
            }
            if !run.ended {
                return Ok(());
            }
            *run = Run { backoff_at_start: self.client.stats().reconnect_errors, ..Run::default() };
        }
        let client = self.client.clone();
        tokio::spawn(watch(self.forwarder.clone(), self.client.clone(), async move { client.run().await }));
        Ok(())
    }

    async fn wait_for_socket(&self, within: Duration) -> Result<(), String> {
        self.client.wait_for_socket(within).await.map_err(|e| e.to_string())
    }

    async fn set_presence(&self, available: bool) -> Result<(), String> {
        let status = if available { PresenceStatus::Available } else { PresenceStatus::Unavailable };
        self.client.presence().set(status).await.map_err(|e| e.to_string())
    }

    async fn pair_with_code(&self, phone: &str) -> Result<String, String> {
        let options = PairCodeOptions { phone_number: phone.to_owned(), ..PairCodeOptions::default() };
        self.client.pair_with_code(options).await.map_err(|e| e.to_string())
    }

    async fn logout(&self) -> Result<(), String> {
        self.forwarder.close();
        // `Client::logout` does not say whether WhatsApp took the unlink: the IQ is sent here,
        // and only an answer counts.
        let unlinked = match self.client.pn() {
            Some(pn) => self.client.execute(RemoveCompanionDeviceSpec::new(&pn)).await.map_err(|e| format!("WhatsApp did not take the unlink: {e}")),
            None => Err("the client has no paired identity".to_owned()),
        };
        self.client.disconnect().await;
        unlinked
    }

    async fn upload(&self, kind: &str, file: &[u8]) -> Result<MediaRef, SendFailure> {
        let media = media_type(kind).ok_or_else(|| SendFailure::Rejected(format!("{kind} is no media kind")))?;
        let upload = self.client.upload(file.to_vec(), media, UploadOptions::default()).await.map_err(|e| {
            let chain: &(dyn std::error::Error + 'static) = e.as_ref();
            match chain.http_status() {
                _ if !self.client.is_connected() || chain.is_transport_unavailable() => {
                    SendFailure::NotConnected(format!("the file could not be uploaded: {e}"))
                }
                // What the file is (its size, its type) is refused; 401/403 are an expired media
                // token the library refreshes, 408/429 a busy server.
                Some(status @ (400 | 413 | 415)) => SendFailure::Rejected(format!("WhatsApp's media servers refused the file ({status})")),
                _ => SendFailure::Failed(format!("the file could not be uploaded: {e}")),
            }
        })?;
        Ok(reference_of(kind, &upload))
    }

    async fn send(&self, wa_id: &str, message: &Content, file: Option<&MediaRef>, fresh: bool) -> Result<(), SendFailure> {
        let to: Jid = message.chat.parse().map_err(|e| SendFailure::Rejected(format!("the recipient {} is not a JID: {e}", message.chat)))?;
        let mut options = SendOptions::default().with_message_id(wa_id.to_owned());
        if fresh {
            // After a 421 (stale group addressing) and the like, the cached view is the problem.
            options = options.with_group_metadata_freshness(Freshness::Refresh).with_device_freshness(Freshness::Refresh);
        }
        let me = [self.client.pn(), self.client.lid()].into_iter().flatten().map(|jid| jid.to_non_ad_string()).collect::<Vec<_>>();
        let proto = match (&message.media, file) {
            (Some(media), Some(file)) => media_message(message, media, file).ok_or_else(|| SendFailure::Rejected("the file's upload reference is unreadable".into()))?,
            (Some(_), None) => return Err(SendFailure::Rejected("a media message needs its uploaded file".into())),
            (None, _) => wa_message(message, &me)?,
        };
        match self.client.send_message_with_options(to, proto, options).await {
            Ok(_) => Ok(()),
            Err(e) => Err(send_failure(&e, self.client.is_connected())),
        }
    }

    async fn on_whatsapp(&self, jid: &str) -> Result<bool, SendFailure> {
        let jid: Jid = jid.parse().map_err(|e| SendFailure::Rejected(format!("{jid} is not a JID: {e}")))?;
        // One number asked, one answer: WhatsApp may name it otherwise (its canonical form, or
        // the LID with the number beside it). No answer, or an error for it, says nothing.
        match self.client.contacts().is_on_whatsapp(std::slice::from_ref(&jid)).await {
            Ok(found) => match found.first() {
                Some(answer) if answer.contact_error.is_none() => Ok(answer.is_registered),
                _ => Err(SendFailure::Failed(format!("WhatsApp did not say whether {jid} is on WhatsApp"))),
            },
            Err(e) if !self.client.is_connected() || e.is_transport_unavailable() => Err(SendFailure::NotConnected(e.to_string())),
            Err(e) => Err(SendFailure::Failed(format!("WhatsApp did not say whether {jid} is on WhatsApp: {e}"))),
        }
    }

    async fn download(&self, media: &MediaRef, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        let stored = StoredMedia::decode(media).ok_or_else(|| crate::media::failure("no_reference", "the kept reference is unreadable"))?;
        let sink = Capped { file: Cursor::new(Vec::new()), max_bytes };
        match self.client.download_to_writer(&stored, sink).await {
            Ok(sink) => Ok(sink.file.into_inner()),
            Err(e) => {
                let chain: &(dyn std::error::Error + 'static) = e.as_ref();
                Err(match chain.http_status() {
                    _ if ErrorChainExt::sources(chain).any(|cause| cause.to_string() == TOO_LARGE) => crate::media::failure("too_large", format!("the file is larger than {max_bytes} bytes")),
                    Some(401 | 403 | 404 | 410) => crate::media::failure("unavailable", "WhatsApp's media servers no longer have this file"),
                    _ if !self.client.is_connected() => crate::media::failure("not_connected", e.to_string()),
                    _ => crate::media::failure("failed", e.to_string()),
                })
            }
        }
    }

    async fn typing(&self, chat: &str, typing: bool) -> Result<(), String> {
        let jid: Jid = chat.parse().map_err(|e| format!("{chat} is not a JID: {e}"))?;
        let chatstate = self.client.chatstate();
        let shown = if typing { chatstate.send_composing(&jid).await } else { chatstate.send_paused(&jid).await };
        shown.map_err(|e| e.to_string())
    }

    async fn groups(&self) -> Result<Vec<Group>, String> {
        let groups = self.client.groups().get_participating().await.map_err(|e| e.to_string())?;
        Ok(groups.into_values().map(|metadata| group(&metadata)).collect())
    }

    async fn disconnect(&self) {
        self.forwarder.close();
        self.client.disconnect().await;
    }
}

/// What a failed send means, by the library's own classification of its errors: the transport
/// gone (or the socket down meanwhile) waits for the connection and counts nothing; a request
/// the library refuses, or an IQ WhatsApp refuses for good (4xx but a timeout, a rate limit or
/// a stale device list: no longer a member of the group, no such group), never goes; the rest
/// (timeouts, server errors, an encryption failure, not logged in yet) is tried again, counted.
fn send_failure(e: &SendError, connected: bool) -> SendFailure {
    if !connected || e.is_transport_unavailable() {
        return SendFailure::NotConnected(e.to_string());
    }
    if let SendError::InvalidRequest(reason) = e {
        return SendFailure::Rejected(reason.clone());
    }
    match e.server_rejection() {
        Some(refused) if (400..500).contains(&refused.code) && !matches!(refused.code, 406 | 408 | 429) => {
            SendFailure::Rejected(format!("WhatsApp refused the message ({} {})", refused.code, refused.text))
        }
        _ => SendFailure::Failed(e.to_string()),
    }
}

/// The quote and mentions of an outgoing message, if it has either. A quote carries a copy of
/// what it quotes (WhatsApp Web's context), which is what the recipient's phone shows above the
/// reply; without it the quote shows empty.
fn context_info(message: &Content) -> Option<wa::ContextInfo> {
    let mut context = match &message.quoted {
        Some(quote) => quote_context(message, quote),
        None if message.mentions.is_empty() => return None,
        None => wa::ContextInfo::default(),
    };
    context.mentioned_jid = message.mentions.clone();
    Some(context)
}

fn quote_context(message: &Content, quote: &Quote) -> wa::ContextInfo {
    let jid = |text: Option<&str>| text.and_then(|t| t.parse::<Jid>().ok());
    let target = jid(Some(&message.chat));
    let (author, chat) = (jid(quote.participant.as_deref()), jid(quote.chat.as_deref()).or_else(|| target.clone()));
    match (author, chat, target) {
        (Some(author), Some(chat), Some(target)) => {
            build_quote_context_with_info(quote.wa_message_id.clone(), &author, &chat, &target, &quoted_message(quote))
        }
        _ => wa::ContextInfo { stanza_id: Some(quote.wa_message_id.clone()), participant: quote.participant.clone(), ..Default::default() },
    }
}

/// The copy of a quoted message a reply carries: its kind, and its text or caption.
fn quoted_message(quote: &Quote) -> wa::Message {
    let caption = quote.text.clone();
    match quote.kind.as_deref() {
        Some("image") => wa::Message { image_message: MessageField::some(wa::message::ImageMessage { caption, ..Default::default() }), ..Default::default() },
        Some("video") => wa::Message { video_message: MessageField::some(wa::message::VideoMessage { caption, ..Default::default() }), ..Default::default() },
        Some("document") => {
            wa::Message { document_message: MessageField::some(wa::message::DocumentMessage { caption, ..Default::default() }), ..Default::default() }
        }
        Some("audio") => wa::Message { audio_message: MessageField::some(wa::message::AudioMessage::default()), ..Default::default() },
        Some("sticker") => wa::Message { sticker_message: MessageField::some(wa::message::StickerMessage::default()), ..Default::default() },
        Some("location") => wa::Message { location_message: MessageField::some(wa::message::LocationMessage::default()), ..Default::default() },
        _ => wa::Message { conversation: Some(caption.unwrap_or_default()), ..Default::default() },
    }
}

/// The protocol message for a message's content: text (extended when it quotes or mentions), a
/// location, or a reaction (to a message the number, one of `me`, wrote or received).
fn wa_message(message: &Content, me: &[String]) -> Result<wa::Message, SendFailure> {
    if let Some(reaction) = &message.reaction {
        let from_me = reaction.participant.as_ref().is_some_and(|p| me.contains(p));
        let key = wa::MessageKey {
            remote_jid: Some(message.chat.clone()),
            from_me: Some(from_me),
            id: Some(reaction.wa_message_id.clone()),
            participant: reaction.participant.clone().filter(|_| message.chat.ends_with("@g.us")),
        };
        return Ok(wa::Message {
            reaction_message: MessageField::some(wa::message::ReactionMessage {
                key: MessageField::some(key),
                text: Some(reaction.emoji.clone()),
                sender_timestamp_ms: Some(shared::time::now_millis()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let context = context_info(message);
    let context_field = || context.clone().map_or_else(MessageField::none, MessageField::some);
    if let Some(text) = &message.text {
        return Ok(match context {
            None => wa::Message { conversation: Some(text.clone()), ..Default::default() },
            Some(_) => wa::Message {
                extended_text_message: MessageField::some(wa::message::ExtendedTextMessage {
                    text: Some(text.clone()),
                    context_info: context_field(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        });
    }
    if let Some(location) = &message.location {
        return Ok(wa::Message {
            location_message: MessageField::some(wa::message::LocationMessage {
                degrees_latitude: Some(location.latitude),
                degrees_longitude: Some(location.longitude),
                name: location.name.clone(),
                address: location.address.clone(),
                context_info: context_field(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Err(SendFailure::Rejected(format!("{} messages cannot be sent by this build", message.kind)))
}

/// The error a [`Capped`] sink gives past its limit.
const TOO_LARGE: &str = "the file is larger than MEDIA_MAX_BYTES";

/// A download's sink that refuses to grow past `max_bytes`: a file's length is what its sender
/// claimed, so only the sink can keep a lie from filling the daemon's memory.
struct Capped {
    file: Cursor<Vec<u8>>,
    max_bytes: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file.position() + buf.len() as u64 > self.max_bytes {
            return Err(std::io::Error::other(TOO_LARGE));
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Capped {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(to)
    }
}

impl DownloadWriter for Capped {
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        DownloadWriter::truncate(&mut self.file, len)
    }
}

/// The library's kind of a media message (each kind is encrypted apart).
fn media_type(kind: &str) -> Option<MediaType> {
    Some(match kind {
        "image" => MediaType::Image,
        "video" => MediaType::Video,
        "audio" => MediaType::Audio,
        "document" => MediaType::Document,
        "sticker" => MediaType::Sticker,
        _ => return None,
    })
}

/// What is kept of an upload to fetch the file again.
fn reference_of(kind: &str, upload: &UploadResponse) -> MediaRef {
    MediaRef {
        kind: kind.to_owned(),
        direct_path: upload.direct_path.clone(),
        media_key: BASE64.encode(upload.media_key),
        file_sha256: BASE64.encode(upload.file_sha256),
        file_enc_sha256: BASE64.encode(upload.file_enc_sha256),
        file_length: upload.file_length,
        url: Some(upload.url.clone()),
        media_key_timestamp: Some(upload.media_key_timestamp),
        streaming_sidecar: upload.streaming_sidecar.as_ref().map(|table| BASE64.encode(table)),
    }
}

/// A received file's reference, from the fields every media message has.
fn received_reference(kind: &str, file: &dyn Downloadable) -> Option<MediaRef> {
    Some(MediaRef {
        kind: kind.to_owned(),
        direct_path: file.direct_path()?.to_owned(),
        media_key: BASE64.encode(file.media_key()?),
        file_sha256: BASE64.encode(file.file_sha256()?),
        file_enc_sha256: BASE64.encode(file.file_enc_sha256()?),
        file_length: file.file_length().unwrap_or_default(),
        ..MediaRef::default()
    })
}

/// A kept reference, decoded for the library's download.
struct StoredMedia {
    kind: MediaType,
    direct_path: String,
    media_key: Vec<u8>,
    file_sha256: Vec<u8>,
    file_enc_sha256: Vec<u8>,
    file_length: u64,
}

impl StoredMedia {
    fn decode(media: &MediaRef) -> Option<StoredMedia> {
        Some(StoredMedia {
            kind: media_type(&media.kind)?,
            direct_path: media.direct_path.clone(),
            media_key: BASE64.decode(&media.media_key).ok()?,
            file_sha256: BASE64.decode(&media.file_sha256).ok()?,
            file_enc_sha256: BASE64.decode(&media.file_enc_sha256).ok()?,
            file_length: media.file_length,
        })
    }
}

impl Downloadable for StoredMedia {
    fn direct_path(&self) -> Option<&str> {
        Some(&self.direct_path)
    }
    fn media_key(&self) -> Option<&[u8]> {
        Some(&self.media_key)
    }
    fn file_enc_sha256(&self) -> Option<&[u8]> {
        Some(&self.file_enc_sha256)
    }
    fn file_sha256(&self) -> Option<&[u8]> {
        Some(&self.file_sha256)
    }
    fn file_length(&self) -> Option<u64> {
        Some(self.file_length)
    }
    fn app_info(&self) -> MediaType {
        self.kind
    }
}

/// The protocol message for an uploaded file (as its kept reference names it), with the
/// caption, file name, voice-note flag, quote and mentions the message carries: the fields
/// whatsapp-rust's own media helpers fill from an upload.
fn media_message(message: &Content, media: &Media, upload: &MediaRef) -> Option<wa::Message> {
    let bytes = |text: &str| BASE64.decode(text).ok();
    let (url, direct_path, file_length) = (upload.url.clone(), Some(upload.direct_path.clone()), Some(upload.file_length));
    let (media_key, file_sha256, file_enc_sha256) = (bytes(&upload.media_key)?, bytes(&upload.file_sha256)?, bytes(&upload.file_enc_sha256)?);
    let (media_key, file_sha256, file_enc_sha256, media_key_timestamp) = (Some(media_key), Some(file_sha256), Some(file_enc_sha256), upload.media_key_timestamp);
    let streaming_sidecar = upload.streaming_sidecar.as_deref().and_then(bytes);
    let context_info = context_info(message).map_or_else(MessageField::none, MessageField::some);
    let mimetype = |default: &str| Some(media.mime_type.clone().unwrap_or_else(|| default.to_owned()));
    let caption = media.caption.clone();
    Some(match message.kind.as_str() {
        "image" => wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                url, direct_path, media_key, file_sha256, file_enc_sha256, file_length, media_key_timestamp,
                mimetype: mimetype("image/jpeg"), caption, context_info, ..Default::default()
            }),
            ..Default::default()
        },
        "video" => wa::Message {
            video_message: MessageField::some(wa::message::VideoMessage {
                url, direct_path, media_key, file_sha256, file_enc_sha256, file_length, media_key_timestamp, streaming_sidecar,
                mimetype: mimetype("video/mp4"), caption, context_info, ..Default::default()
            }),
            ..Default::default()
        },
        "audio" => wa::Message {
            audio_message: MessageField::some(wa::message::AudioMessage {
                url, direct_path, media_key, file_sha256, file_enc_sha256, file_length, media_key_timestamp, streaming_sidecar,
                mimetype: mimetype("audio/ogg; codecs=opus"), ptt: Some(media.voice_note), context_info, ..Default::default()
            }),
            ..Default::default()
        },
        "sticker" => wa::Message {
            sticker_message: MessageField::some(wa::message::StickerMessage {
                url, direct_path, media_key, file_sha256, file_enc_sha256, file_length, media_key_timestamp,
                mimetype: mimetype("image/webp"), context_info, ..Default::default()
            }),
            ..Default::default()
        },
        _ => wa::Message {
            document_message: MessageField::some(wa::message::DocumentMessage {
                url, direct_path, media_key, file_sha256, file_enc_sha256, file_length, media_key_timestamp,
                mimetype: mimetype("application/octet-stream"), file_name: media.file_name.clone(), title: media.file_name.clone(),
                caption, context_info, ..Default::default()
            }),
            ..Default::default()
        },
    })
}

/// Hands what arrives to the session's inbox before WhatsApp's server is acknowledged; an
/// `Err` leaves the batch unacknowledged, and WhatsApp delivers it again at the next connect.
struct Keeper {
    session_id: String,
    inbox: Arc<dyn Inbox>,
}

#[async_trait]
impl InboundDurabilityHook for Keeper {
    async fn on_messages(&self, client: Arc<whatsapp_rust::Client>, batch: &[InboundMessage]) -> whatsapp_rust::anyhow::Result<()> {
        let me = client.pn().map(|pn| pn.to_non_ad_string());
        let kept: Vec<(Incoming, &InboundMessage)> =
            batch.iter().filter_map(|inbound| Some((incoming(&self.session_id, me.as_deref(), inbound)?, inbound))).collect();
        if kept.is_empty() {
            return Ok(());
        }
        let stored = self.inbox.store(kept.iter().map(|(incoming, _)| incoming.clone()).collect()).await.map_err(whatsapp_rust::anyhow::Error::msg)?;
        if !stored.read.is_empty() {
            // Not awaited here: the hook runs inside the receive pipeline, under the senders' locks.
            let read = stored.read.iter().filter_map(|&i| kept.get(i)).map(|(incoming, m)| {
                let (chat, participant) = receipt_address(&m.info.source);
                let ours = (incoming.content.chat.clone(), incoming.content.from.clone().unwrap_or_default());
                ((chat, participant, ours), m.info.id.clone())
            });
            tokio::spawn(mark_read(client, self.inbox.clone(), receipts_by_chat(read)));
        }
        Ok(())
    }
}

/// Where a read receipt for a received message goes: its chat, and in a group the member who
/// wrote it, as their account (without the device that sent it), as WhatsApp Web addresses it.
fn receipt_address(source: &whatsapp_rust::types::message::MessageSource) -> (Jid, Option<Jid>) {
    (source.chat.clone(), source.is_group.then(|| source.sender.to_non_ad()))
}

/// Read receipts, one per chat and sender (the group member who wrote), as WhatsApp Web sends
/// them; the messages are `read` once theirs went out.
async fn mark_read(client: Arc<whatsapp_rust::Client>, inbox: Arc<dyn Inbox>, read: Vec<((Jid, Option<Jid>, (String, String)), Vec<String>)>) {
    for ((chat, sender, (our_chat, our_sender)), ids) in read {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        match client.mark_as_read(&chat, sender.as_ref(), &refs).await {
            Ok(()) => inbox.read(&our_chat, &our_sender, ids).await,
            Err(e) => tracing::warn!(%chat, "cannot send read receipts: {e}"),
        }
    }
}

/// A received message as the gateway keeps it, or a contact's edit or deletion of one; `None`
/// for what is no message to show: the number's own messages from its other devices, and the
/// other protocol messages (key shares, history-sync notices).
fn incoming(session_id: &str, me: Option<&str>, inbound: &InboundMessage) -> Option<Incoming> {
    let (info, base) = (&inbound.info, inbound.message.get_base_message());
    let source = &info.source;
    if source.is_from_me {
        return None;
    }
    if let Some(protocol) = base.protocol_message.as_option() {
        return change(session_id, me, inbound, protocol);
    }
    let sender = source.sender.to_non_ad();
    let alt = source.sender_alt.as_ref().map(Jid::to_non_ad);
    let (phone_jid, lid) = if sender.is_lid() { (alt.filter(Jid::is_pn), Some(sender.clone())) } else { (Some(sender.clone()), alt.filter(Jid::is_lid)) };
    let media = |mime: &Option<String>, caption: Option<&String>, file_name: Option<&String>, size: Option<u64>, voice_note: bool| Media {
        url: None,
        mime_type: mime.clone(),
        caption: caption.cloned(),
        file_name: file_name.cloned(),
        size,
        voice_note,
    };
    let (kind, media, file): (&str, _, Option<&dyn Downloadable>) = if let Some(m) = base.image_message.as_option() {
        ("image", Some(media(&m.mimetype, m.caption.as_ref(), None, m.file_length, false)), Some(m))
    } else if let Some(m) = base.video_message.as_option() {
        ("video", Some(media(&m.mimetype, m.caption.as_ref(), None, m.file_length, false)), Some(m))
    } else if let Some(m) = base.audio_message.as_option() {
        ("audio", Some(media(&m.mimetype, None, None, m.file_length, m.ptt.unwrap_or(false))), Some(m))
    } else if let Some(m) = base.document_message.as_option() {
        ("document", Some(media(&m.mimetype, m.caption.as_ref(), m.file_name.as_ref(), m.file_length, false)), Some(m))
    } else if let Some(m) = base.sticker_message.as_option() {
        ("sticker", Some(media(&m.mimetype, None, None, m.file_length, false)), Some(m))
    } else if base.reaction_message.is_set() {
        ("reaction", None, None)
    } else if base.location_message.is_set() {
        ("location", None, None)
    } else if base.text_content().is_some() {
        ("text", None, None)
    } else {
        ("unsupported", None, None)
    };
    let media_ref = file.and_then(|file| received_reference(kind, file));
    let mut content = Content::inbound(session_id, &source.chat.to_non_ad_string(), &sender.to_string(), me, kind);
    content.created_at = info.timestamp.timestamp_millis();
    content.media = media;
    content.text = base.text_content().map(str::to_owned);
    content.sender = Some(Sender {
        phone_jid: phone_jid.map(|j| j.to_string()),
        lid: lid.map(|j| j.to_string()),
        push_name: Some(info.push_name.clone()).filter(|n| !n.is_empty()),
    });
    if let Some(l) = base.location_message.as_option() {
        content.location = Some(Location {
            latitude: l.degrees_latitude.unwrap_or_default(),
            longitude: l.degrees_longitude.unwrap_or_default(),
            name: l.name.clone(),
            address: l.address.clone(),
        });
    }
    if let Some(r) = base.reaction_message.as_option() {
        let target = r.key.as_option().and_then(|k| k.id.clone()).unwrap_or_default();
        let participant = r.key.as_option().and_then(|k| k.participant.clone());
        content.reaction = Some(Reaction { wa_message_id: target, message_id: None, participant, emoji: r.text.clone().unwrap_or_default() });
    }
    if let Some(context) = context_of(base) {
        let quoted = context.quoted_message.as_option();
        content.quoted = context.stanza_id.clone().map(|wa_message_id| Quote {
            wa_message_id,
            participant: context.participant.clone(),
            chat: context.remote_jid.clone(),
            kind: None,
            text: quoted.and_then(|m| m.text_content().or_else(|| m.get_caption())).map(str::to_owned),
        });
        content.mentions = context.mentioned_jid.clone();
    }
    Some(Incoming::message(content, info.id.clone(), media_ref))
}

/// A contact's edit of a message they sent, or its deletion for everyone (by them, or by a
/// group admin): the protocol message names the message changed by its WhatsApp id.
fn change(session_id: &str, me: Option<&str>, inbound: &InboundMessage, protocol: &wa::message::ProtocolMessage) -> Option<Incoming> {
    use wa::message::protocol_message::Type;
    let target = protocol.key.as_option()?.id.clone()?;
    let (kind, change) = match protocol.r#type? {
        Type::MESSAGE_EDIT => {
            let edited = protocol.edited_message.as_option();
            let text = edited.and_then(|m| m.text_content().or_else(|| m.get_caption())).map(str::to_owned);
            ("edit", Change::Edit { target, text })
        }
        Type::REVOKE => ("revoke", Change::Revoke { target }),
        _ => return None,
    };
    let (info, source) = (&inbound.info, &inbound.info.source);
    let mut content = Content::inbound(session_id, &source.chat.to_non_ad_string(), &source.sender.to_non_ad().to_string(), me, kind);
    content.created_at = protocol.timestamp_ms.unwrap_or_else(|| info.timestamp.timestamp_millis());
    Some(Incoming { content, wa_id: info.id.clone(), media_ref: None, change: Some(change) })
}

/// A message the session could not decrypt, kept as such (`undecryptable`) until WhatsApp
/// recovers it: the library asks the sender's phone (and our own) for it again, and the
/// recovered copy, with the same id, fills the record in. `None` for what is not shown: our own
/// messages, status posts, and what WhatsApp says to hide.
fn undecryptable(session_id: &str, me: Option<&str>, failed: &whatsapp_rust::types::events::UndecryptableMessage) -> Option<Incoming> {
    use whatsapp_rust::types::events::DecryptFailMode;
    let (info, source) = (&failed.info, &failed.info.source);
    if source.is_from_me || source.chat.is_status_broadcast() || failed.decrypt_fail_mode == DecryptFailMode::Hide {
        return None;
    }
    let sender = source.sender.to_non_ad();
    let mut content = Content::inbound(session_id, &source.chat.to_non_ad_string(), &sender.to_string(), me, UNDECRYPTABLE);
    content.created_at = info.timestamp.timestamp_millis();
    let alt = source.sender_alt.as_ref().map(Jid::to_non_ad);
    let (phone_jid, lid) = if sender.is_lid() { (alt.filter(Jid::is_pn), Some(sender.clone())) } else { (Some(sender.clone()), alt.filter(Jid::is_lid)) };
    content.sender = Some(Sender {
        phone_jid: phone_jid.map(|j| j.to_string()),
        lid: lid.map(|j| j.to_string()),
        push_name: Some(info.push_name.clone()).filter(|n| !n.is_empty()),
    });
    Some(Incoming::message(content, info.id.clone(), None))
}

/// The context (quoted message, mentions) of the kinds of message the gateway reads.
fn context_of(base: &wa::Message) -> Option<&wa::ContextInfo> {
    [
        base.extended_text_message.as_option().and_then(|m| m.context_info.as_option()),
        base.image_message.as_option().and_then(|m| m.context_info.as_option()),
        base.video_message.as_option().and_then(|m| m.context_info.as_option()),
        base.audio_message.as_option().and_then(|m| m.context_info.as_option()),
        base.document_message.as_option().and_then(|m| m.context_info.as_option()),
        base.sticker_message.as_option().and_then(|m| m.context_info.as_option()),
        base.location_message.as_option().and_then(|m| m.context_info.as_option()),
    ]
    .into_iter()
    .flatten()
    .next()
}

/// The phone number a JID stands for, when it is a phone-number JID.
fn phone_of(jid: &Jid) -> Option<String> {
    jid.is_pn().then(|| jid.user.to_string())
}

fn group(metadata: &whatsapp_rust::features::GroupMetadata) -> Group {
    let participants: Vec<Participant> = metadata
        .participants
        .iter()
        .map(|p| Participant {
            jid: p.jid.to_non_ad_string(),
            phone_number: p.phone_number.as_ref().or(Some(&p.jid)).and_then(phone_of),
            role: if p.is_super_admin() { Role::Superadmin } else if p.is_admin() { Role::Admin } else { Role::Member },
        })
        .collect();
    Group {
        jid: metadata.id.to_non_ad_string(),
        subject: metadata.subject.clone(),
        description: metadata.description.clone(),
        owner: metadata.creator_pn.as_ref().or(metadata.creator.as_ref()).map(Jid::to_non_ad_string),
        created_at: metadata.creation_time.map(|secs| secs as i64 * 1000),
        size: metadata.size.unwrap_or(participants.len() as u32),
        participants,
        updated_at: shared::time::now_millis(),
    }
}

fn contact(jid: &Jid) -> Contact {
    Contact { jid: jid.to_non_ad_string(), phone_number: phone_of(jid), updated_at: shared::time::now_millis(), ..Contact::default() }
}

/// Maps library events onto [`BackendEvent`]s as they are dispatched, and keeps what the end of
/// the current run of the connection loop is reported with.
struct Forwarder {
    events: Events,
    client: OnceLock<Weak<whatsapp_rust::Client>>,
    run: Mutex<Run>,
    session_id: String,
    /// For what arrives outside the durability hook: undecryptable messages, and those the
    /// phone sends again after one.
    inbox: Arc<dyn Inbox>,
}

/// What is known of the current run of the library's connection loop.
#[derive(Default)]
struct Run {
    /// The library's backoff counter when the run began.
    backoff_at_start: u32,
    /// The phone accepted a pairing: WhatsApp restarts the stream next.
    paired: bool,
    /// Why the socket went, as the library said (`Disconnected`, a connect failure).
    reason: Option<String>,
    /// The run ended.
    ended: bool,
    /// The client is done: a final event was reported (the end of the loop is then no news), or
    /// `disconnect` or `logout` was called. It is not run again.
    done: bool,
}

impl Forwarder {
    fn run(&self) -> std::sync::MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Our own number's JID, as received messages name their recipient.
    fn me(&self) -> Option<String> {
        Some(self.client.get()?.upgrade()?.pn()?.to_non_ad_string())
    }

    /// Hands what arrived outside the durability hook to the inbox, off the dispatch path.
    fn keep(&self, batch: Vec<Incoming>) {
        if batch.is_empty() {
            return;
        }
        let (inbox, session) = (self.inbox.clone(), self.session_id.clone());
        tokio::spawn(async move {
            if let Err(e) = inbox.store(batch).await {
                tracing::warn!(%session, "cannot keep what arrived outside the durability hook: {e}");
            }
        });
    }

    fn begin_run(&self, backoff_at_start: u32) {
        *self.run() = Run { backoff_at_start, ..Run::default() };
    }

    /// The client is being closed on purpose: its end is not reported, and it is not run again.
    fn close(&self) {
        self.run().done = true;
    }

    fn identity(&self) -> Option<Identity> {
        let client = self.client.get()?.upgrade()?;
        let pn = client.pn()?;
        let push_name = Some(client.push_name()).filter(|n| !n.is_empty());
        Some(identity(&pn, client.lid().as_ref(), push_name))
    }
}

/// `EventHandler` is implemented on a wrapper so the forwarder can be shared with `connect`.
struct SharedForwarder(Arc<Forwarder>);

impl EventHandler for SharedForwarder {
    fn handle_event(&self, event: Arc<Event>) {
        let forwarder = &self.0;
        match &*event {
            Event::PairSuccess(_) => forwarder.run().paired = true,
            Event::Disconnected(gone) => forwarder.run().reason = Some(gone.reason.to_string()),
            Event::ConnectFailure(failure) if failure.reason.should_reconnect() => {
                forwarder.run().reason = Some(format!("connect failure {}: {}", failure_reason(&failure.reason), failure.message.as_deref().unwrap_or("")));
            }
            // The library keeps the connection after these (a per-stanza routing failure): no drop.
            Event::StreamError(error) => tracing::warn!(code = %error.code, "WhatsApp reported a stream error; the connection stays"),
            Event::UndecryptableMessage(failed) => forwarder.keep(undecryptable(&forwarder.session_id, forwarder.me().as_deref(), failed).into_iter().collect()),
            // Messages the phone recovered (peer data operation) come outside the durability
            // hook, and only this way: kept here, best effort (the library acked them already).
            Event::Messages(batch) if !batch.hook_committed => {
                let me = forwarder.me();
                let recovered = batch.iter().filter(|m| m.info.unavailable_request_id.is_some());
                forwarder.keep(recovered.filter_map(|m| incoming(&forwarder.session_id, me.as_deref(), m)).collect());
            }
            _ => {}
        }
        if let Some(mapped) = map_event(&event, || forwarder.identity()) {
            if is_final(&mapped) {
                forwarder.run().done = true;
            }
            let _ = forwarder.events.send(mapped);
        }
    }
}

/// Events after which the library ends the connection for good (its reconnect would be off).
fn is_final(event: &BackendEvent) -> bool {
    matches!(
        event,
        BackendEvent::LoggedOut { .. }
            | BackendEvent::StreamReplaced
            | BackendEvent::Refused { .. }
            | BackendEvent::TemporaryBan { .. }
            | BackendEvent::QrExhausted { code_outstanding: false }
    )
}

fn identity(pn: &Jid, lid: Option<&Jid>, push_name: Option<String>) -> Identity {
    Identity {
        jid: pn.to_non_ad_string(),
        lid: lid.map(Jid::to_non_ad_string),
        phone: Some(pn.user.to_string()),
        push_name,
    }
}

/// The library's events that matter to a session, and what each one means for it. A lost
/// connection is not among them: the end of the connection loop reports it (see [`watch`]).
fn map_event(event: &Event, identity_now: impl FnOnce() -> Option<Identity>) -> Option<BackendEvent> {
    Some(match event {
        Event::PairingQrCode(qr) => BackendEvent::Qr { code: qr.code.clone(), valid_for: qr.timeout },
        Event::PairingQrCodesExhausted(exhausted) => BackendEvent::QrExhausted { code_outstanding: !exhausted.disconnected },
        Event::PairingCodeRefresh(_) => {
            BackendEvent::PairingFailed { reason: "code_expired: WhatsApp asked for a new phone code".into(), retry_after: None }
        }
        Event::PairingCodeError(failed) => BackendEvent::PairingFailed {
            reason: match &failed.rejection {
                Some(rejection) if rejection.is_throttled() => format!("rate_limited: {}", failed.error),
                _ => format!("code_refused: {}", failed.error),
            },
            retry_after: failed.backoff,
        },
        Event::PairError(failed) => BackendEvent::PairingFailed { reason: format!("confirmation_failed: {}", failed.error), retry_after: None },
        Event::PairSuccess(paired) => BackendEvent::Paired(identity(&paired.id, Some(&paired.lid), None)),
        Event::Connected(_) => match identity_now() {
            Some(identity) => BackendEvent::Connected(identity),
            None => BackendEvent::Refused { reason: "connected without a paired identity".into() },
        },
        Event::SelfPushNameUpdated(update) if !update.new_name.is_empty() => BackendEvent::ProfileName(update.new_name.clone()),
        Event::LoggedOut(out) => BackendEvent::LoggedOut { reason: failure_reason(&out.reason) },
        Event::StreamReplaced(_) => BackendEvent::StreamReplaced,
        Event::TemporaryBan(ban) => BackendEvent::TemporaryBan { reason: ban.code.to_string(), lifts_in: ban.expire.to_std().ok() },
        Event::ConnectFailure(failure) if failure.reason.is_logged_out() => {
            BackendEvent::LoggedOut { reason: failure_reason(&failure.reason) }
        }
        Event::ConnectFailure(failure) if failure.reason == ConnectFailureReason::TempBanned => {
            BackendEvent::TemporaryBan { reason: failure.message.clone().unwrap_or_else(|| "temporarily banned".into()), lifts_in: None }
        }
        // A server restarting: the loop ends and is reported as a lost connection.
        Event::ConnectFailure(failure) if failure.reason.should_reconnect() => return None,
        Event::ConnectFailure(failure) => BackendEvent::Refused {
            reason: format!("login refused ({}): {}", failure_reason(&failure.reason), failure.message.as_deref().unwrap_or("")),
        },
        Event::ClientOutdated(_) => BackendEvent::Refused { reason: "WhatsApp refused this client version as outdated".into() },
        Event::ContactUpdate(update) => {
            let phone = update.action.pn_jid.as_deref().and_then(|pn| pn.parse::<Jid>().ok()).as_ref().and_then(phone_of);
            BackendEvent::Contacts(vec![Contact {
                name: update.action.full_name.clone().or_else(|| update.action.first_name.clone()),
                phone_number: phone.or_else(|| phone_of(&update.jid)),
                ..contact(&update.jid)
            }])
        }
        Event::ServerAck(ack) if ack.class.as_deref().is_none_or(|class| class == "message") => {
            BackendEvent::ServerAck { id: ack.id.clone(), error: ack.error.clone() }
        }
        Event::Receipt(receipt) => {
            let ids = receipt.message_ids.iter().map(|id| id.to_string()).collect();
            let status = match receipt.r#type {
                ReceiptType::Delivered => MessageStatus::Delivered,
                ReceiptType::Read => MessageStatus::Read,
                ReceiptType::Played => MessageStatus::Played,
                // Downgraded from a delivery: the peer's device cannot take the message.
                ReceiptType::Sent => return Some(BackendEvent::Undeliverable { ids }),
                // Our own devices' receipts, retries (the library answers them), media re-upload
                // requests, and what the apps do not show.
                _ => return None,
            };
            BackendEvent::Receipt { ids, status }
        }
        _ => return None,
    })
}

fn failure_reason(reason: &ConnectFailureReason) -> String {
    format!("{reason:?}")
}

#[cfg(test)]
mod tests {
    //! The real backend's reading of the library, event by event: what each event it handles
    //! becomes, the events it leaves alone, how a run of the connection loop is reported, how
    //! send failures are classed, and what received protocol messages mean.
    use super::*;
    use shared::inbox::Change;
    use std::time::Duration;
    use whatsapp_rust::types::events::{
        ClientOutdated, ConnectFailure, Connected, ContactUpdate, DecryptFailMode, Disconnected, LoggedOut, PairError, PairSuccess,
        PairingCodeError, PairingCodeRefresh, PairingQrCode, PairingQrCodesExhausted, Receipt, SelfPushNameUpdated, ServerAck,
        StreamError, StreamReplaced, TempBanReason, TemporaryBan, UnavailableType, UndecryptableMessage,
    };
    use whatsapp_rust::types::message::{MessageInfo, MessageSource};

    fn jid(text: &str) -> Jid {
        text.parse().unwrap()
    }

    fn me() -> Option<Identity> {
        Some(identity(&jid("6281234567890@s.whatsapp.net"), Some(&jid("205227043110953@lid")), Some("Support".into())))
    }

    fn mapped(event: Event) -> Option<BackendEvent> {
        map_event(&event, me)
    }

    #[test]
    fn pairing_events_map_to_qr_codes_identity_and_failures() {
        let qr = Event::PairingQrCode(PairingQrCode::builder().code("2@ref,a,b,c".into()).timeout(Duration::from_secs(60)).build());
        assert_eq!(mapped(qr), Some(BackendEvent::Qr { code: "2@ref,a,b,c".into(), valid_for: Duration::from_secs(60) }));
        let exhausted = Event::PairingQrCodesExhausted(PairingQrCodesExhausted::builder().disconnected(true).build());
        assert_eq!(mapped(exhausted), Some(BackendEvent::QrExhausted { code_outstanding: false }));
        let kept = Event::PairingQrCodesExhausted(PairingQrCodesExhausted::builder().disconnected(false).build());
        assert_eq!(mapped(kept), Some(BackendEvent::QrExhausted { code_outstanding: true }), "the socket stays up for a phone code");
        let paired = Event::PairSuccess(
            PairSuccess::builder()
                .id(jid("6281234567890:12@s.whatsapp.net"))
                .lid(jid("205227043110953:12@lid"))
                .business_name(String::new())
                .platform("android".into())
                .build(),
        );
        let Some(BackendEvent::Paired(identity)) = mapped(paired) else { panic!("not a pairing") };
        assert_eq!(identity.jid, "6281234567890@s.whatsapp.net");
        assert_eq!(identity.lid.as_deref(), Some("205227043110953@lid"));
        assert_eq!(identity.phone.as_deref(), Some("6281234567890"));

        let refresh = Event::PairingCodeRefresh(PairingCodeRefresh::builder().force_manual(false).build());
        assert!(matches!(mapped(refresh), Some(BackendEvent::PairingFailed { reason, retry_after: None }) if reason.starts_with("code_expired")));
        let throttled = PairingCodeError::builder()
            .rejection(whatsapp_rust::wacore::pair_code::PairCodeRejection::RateOverlimit)
            .backoff(Duration::from_secs(60))
            .error("rate-overlimit".into())
            .build();
        let Some(BackendEvent::PairingFailed { reason, retry_after }) = mapped(Event::PairingCodeError(throttled)) else { panic!("not a failure") };
        assert!(reason.starts_with("rate_limited"), "{reason}");
        assert_eq!(retry_after, Some(Duration::from_secs(60)));
        let refused = PairingCodeError::builder().rejection(whatsapp_rust::wacore::pair_code::PairCodeRejection::FeatureNotAvailable).error("no".into()).build();
        assert!(matches!(mapped(Event::PairingCodeError(refused)), Some(BackendEvent::PairingFailed { reason, .. }) if reason.starts_with("code_refused")));
        let unconfirmed = PairError::builder()
            .id(jid("6281234567890:12@s.whatsapp.net"))
            .lid(jid("205227043110953:12@lid"))
            .business_name(String::new())
            .platform("android".into())
            .error("bad signature".into())
            .build();
        assert!(matches!(mapped(Event::PairError(unconfirmed)), Some(BackendEvent::PairingFailed { reason, .. }) if reason.starts_with("confirmation_failed")));
    }

    #[test]
    fn connection_events_map_to_status_changes() {
        let connected = Event::Connected(Connected::builder().build());
        assert_eq!(map_event(&connected, me), Some(BackendEvent::Connected(me().unwrap())));
        assert!(matches!(map_event(&connected, || None), Some(BackendEvent::Refused { .. })));
        let dropped = Event::Disconnected(Disconnected::builder().reason(whatsapp_rust::wacore::net::DisconnectReason::StreamEnded).build());
        assert_eq!(mapped(dropped), None, "the end of the run reports a lost connection, once");
        let out = Event::LoggedOut(LoggedOut::builder().on_connect(true).reason(ConnectFailureReason::LoggedOut).build());
        assert!(matches!(mapped(out), Some(BackendEvent::LoggedOut { .. })));
        assert_eq!(mapped(Event::StreamReplaced(StreamReplaced::builder().build())), Some(BackendEvent::StreamReplaced));
        let ban = Event::TemporaryBan(TemporaryBan::builder().code(TempBanReason::SentToTooManyPeople).expire(whatsapp_rust::chrono::TimeDelta::hours(1)).build());
        let Some(BackendEvent::TemporaryBan { lifts_in, .. }) = mapped(ban) else { panic!("not a ban") };
        assert_eq!(lifts_in, Some(Duration::from_secs(3600)));
        let failure = |reason| Event::ConnectFailure(ConnectFailure::builder().reason(reason).build());
        assert!(matches!(mapped(failure(ConnectFailureReason::AccountLocked)), Some(BackendEvent::LoggedOut { .. })));
        assert!(matches!(mapped(failure(ConnectFailureReason::TempBanned)), Some(BackendEvent::TemporaryBan { lifts_in: None, .. })));
        assert_eq!(mapped(failure(ConnectFailureReason::ServiceUnavailable)), None, "a server restarting is a lost connection, reported when the run ends");
        assert_eq!(mapped(failure(ConnectFailureReason::InternalServerError)), None);
        assert!(matches!(mapped(failure(ConnectFailureReason::Unknown(409))), Some(BackendEvent::Refused { .. })), "what no reconnect fixes");
        assert!(matches!(mapped(Event::ClientOutdated(ClientOutdated::builder().build())), Some(BackendEvent::Refused { .. })));
        for code in ["", "500", "503", "429"] {
            assert_eq!(mapped(Event::StreamError(StreamError::builder().code(code.into()).build())), None, "stream error {code:?} does not drop the connection");
        }
        let renamed = SelfPushNameUpdated::builder().from_server(true).old_name(String::new()).new_name("Support".into()).build();
        assert_eq!(mapped(Event::SelfPushNameUpdated(renamed)), Some(BackendEvent::ProfileName("Support".into())));
        let cleared = SelfPushNameUpdated::builder().from_server(true).old_name("Support".into()).new_name(String::new()).build();
        assert_eq!(mapped(Event::SelfPushNameUpdated(cleared)), None);
    }

    #[test]
    fn acks_and_receipts_map_to_message_progress() {
        let ack = |class: Option<&str>, error: Option<&str>| {
            Event::ServerAck(ServerAck::builder().id("3EB0".into()).maybe_class(class.map(str::to_owned)).maybe_error(error.map(str::to_owned)).build())
        };
        assert_eq!(mapped(ack(Some("message"), None)), Some(BackendEvent::ServerAck { id: "3EB0".into(), error: None }));
        assert_eq!(mapped(ack(None, Some("479"))), Some(BackendEvent::ServerAck { id: "3EB0".into(), error: Some("479".into()) }));
        assert_eq!(mapped(ack(Some("receipt"), None)), None, "an ack of our own receipt names no message");
        let receipt = |kind| {
            Event::Receipt(
                Receipt::builder()
                    .source(MessageSource { chat: jid("6281299999999@s.whatsapp.net"), sender: jid("6281299999999:3@s.whatsapp.net"), ..Default::default() })
                    .message_ids(vec!["3EB0".to_owned()])
                    .timestamp(whatsapp_rust::chrono::Utc::now())
                    .r#type(kind)
                    .offline(false)
                    .build(),
            )
        };
        let ids = vec!["3EB0".to_owned()];
        assert_eq!(mapped(receipt(ReceiptType::Delivered)), Some(BackendEvent::Receipt { ids: ids.clone(), status: MessageStatus::Delivered }));
        assert_eq!(mapped(receipt(ReceiptType::Read)), Some(BackendEvent::Receipt { ids: ids.clone(), status: MessageStatus::Read }));
        assert_eq!(mapped(receipt(ReceiptType::Played)), Some(BackendEvent::Receipt { ids: ids.clone(), status: MessageStatus::Played }));
        assert_eq!(mapped(receipt(ReceiptType::Sent)), Some(BackendEvent::Undeliverable { ids }), "a LID peer that cannot take it");
        for ignored in [ReceiptType::ReadSelf, ReceiptType::PlayedSelf, ReceiptType::Retry, ReceiptType::ServerError, ReceiptType::Inactive, ReceiptType::PeerMsg] {
            assert_eq!(mapped(receipt(ignored.clone())), None, "{ignored:?}");
        }
    }

    #[test]
    fn contact_updates_become_kept_contacts() {
        let action = whatsapp_rust::waproto::whatsapp::sync_action_value::ContactAction {
            full_name: Some("Budi Santoso".into()),
            pn_jid: Some("6281299999999@s.whatsapp.net".into()),
            ..Default::default()
        };
        let update = ContactUpdate::builder()
            .jid(jid("205227043110999@lid"))
            .timestamp(whatsapp_rust::chrono::Utc::now())
            .action(Box::new(action))
            .from_full_sync(true)
            .build();
        let Some(BackendEvent::Contacts(contacts)) = mapped(Event::ContactUpdate(update)) else { panic!("not contacts") };
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0].jid, "205227043110999@lid");
        assert_eq!(contacts[0].name.as_deref(), Some("Budi Santoso"));
        assert_eq!(contacts[0].phone_number.as_deref(), Some("6281299999999"), "the phone number behind a LID");
        assert_eq!(contacts[0].push_name, None, "a contact update says nothing of the push name");
    }

    /// An inbox that records what it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Incoming>>);

    #[async_trait]
    impl Inbox for Recorder {
        async fn store(&self, batch: Vec<Incoming>) -> Result<crate::backend::Kept, String> {
            self.0.lock().unwrap().extend(batch);
            Ok(crate::backend::Kept::default())
        }

        async fn read(&self, _chat: &str, _sender: &str, _wa_ids: Vec<String>) {}
    }

    fn info(chat: &str, sender: &str, id: &str) -> MessageInfo {
        let source = MessageSource { chat: jid(chat), sender: jid(sender), is_group: chat.ends_with("@g.us") || chat == "status@broadcast", ..Default::default() };
        MessageInfo { source, id: id.into(), push_name: "Budi".into(), ..Default::default() }
    }

    fn forwarder() -> (Arc<Forwarder>, tokio::sync::mpsc::UnboundedReceiver<BackendEvent>, Arc<Recorder>) {
        let (status, reports) = tokio::sync::mpsc::unbounded_channel();
        let inbox = Arc::new(Recorder::default());
        let forwarder = Forwarder { events: Events::to(status), client: OnceLock::new(), run: Mutex::default(), session_id: "01S".into(), inbox: inbox.clone() };
        (Arc::new(forwarder), reports, inbox)
    }

    #[tokio::test]
    async fn the_handler_keeps_what_the_end_of_a_run_is_reported_with() {
        let (forwarder, mut reports, inbox) = forwarder();
        let handler = SharedForwarder(forwarder.clone());
        let paired = PairSuccess::builder().id(jid("6281234567890:12@s.whatsapp.net")).lid(jid("205227043110953:12@lid")).business_name(String::new()).platform("android".into()).build();
        handler.handle_event(Arc::new(Event::PairSuccess(paired)));
        assert!(forwarder.run().paired, "the stream restart after a pairing is expected");
        handler.handle_event(Arc::new(Event::Disconnected(Disconnected::builder().reason(whatsapp_rust::wacore::net::DisconnectReason::StreamEnded).build())));
        assert!(forwarder.run().reason.is_some(), "why the socket went is kept for the report");
        assert!(!forwarder.run().done);
        handler.handle_event(Arc::new(Event::StreamReplaced(StreamReplaced::builder().build())));
        assert!(forwarder.run().done, "a final event ends the client");
        assert!(matches!(reports.recv().await, Some(BackendEvent::Paired(_))));
        assert_eq!(reports.recv().await, Some(BackendEvent::StreamReplaced));

        // An undecryptable message is kept as such, outside the durability hook.
        let failed = |info: MessageInfo, mode| {
            let failed = UndecryptableMessage::builder().info(Arc::new(info)).is_unavailable(false).unavailable_type(UnavailableType::Unknown).decrypt_fail_mode(mode).build();
            Arc::new(Event::UndecryptableMessage(failed))
        };
        handler.handle_event(failed(info("6281299999999@s.whatsapp.net", "6281299999999:2@s.whatsapp.net", "3A01"), DecryptFailMode::Show));
        handler.handle_event(failed(info("6281299999999@s.whatsapp.net", "6281299999999:2@s.whatsapp.net", "3A03"), DecryptFailMode::Hide));
        handler.handle_event(failed(info("status@broadcast", "6281299999999@s.whatsapp.net", "3A02"), DecryptFailMode::Show));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let kept = inbox.0.lock().unwrap().clone();
        assert_eq!(kept.len(), 1, "hidden ones and status posts are not shown: {kept:?}");
        assert_eq!((kept[0].content.kind.as_str(), kept[0].wa_id.as_str()), ("undecryptable", "3A01"));
        assert_eq!(kept[0].content.from.as_deref(), Some("6281299999999@s.whatsapp.net"), "the sender's account, not its device");
    }

    fn inbound(info: MessageInfo, message: wa::Message) -> InboundMessage {
        InboundMessage::builder().info(Arc::new(info)).message(Arc::new(message)).build()
    }

    #[test]
    fn edits_and_deletions_are_changes_to_the_message_they_name() {
        use wa::message::protocol_message::Type;
        let protocol = |kind, edited: Option<wa::Message>| wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                key: MessageField::some(wa::MessageKey { id: Some("3A0043".into()), from_me: Some(true), ..Default::default() }),
                r#type: Some(kind),
                edited_message: edited.map_or_else(MessageField::none, MessageField::some),
                timestamp_ms: Some(1_700_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let from = info("6281299999999@s.whatsapp.net", "6281299999999:2@s.whatsapp.net", "3A0044");
        let edited = wa::Message { conversation: Some("meet at 6".into()), ..Default::default() };
        let edit = incoming("01S", None, &inbound(from.clone(), protocol(Type::MESSAGE_EDIT, Some(edited)))).expect("an edit");
        assert_eq!(edit.change, Some(Change::Edit { target: "3A0043".into(), text: Some("meet at 6".into()) }));
        assert_eq!((edit.wa_id.as_str(), edit.content.created_at), ("3A0044", 1_700_000_000_000));
        let revoke = incoming("01S", None, &inbound(from.clone(), protocol(Type::REVOKE, None))).expect("a deletion");
        assert_eq!(revoke.change, Some(Change::Revoke { target: "3A0043".into() }));
        assert_eq!(incoming("01S", None, &inbound(from, protocol(Type::EPHEMERAL_SETTING, None))), None, "other protocol messages show nothing");
    }

    #[test]
    fn status_posts_reach_the_inbox_as_such_and_group_receipts_name_the_account() {
        let text = wa::Message { conversation: Some("my holiday".into()), ..Default::default() };
        let post = incoming("01S", None, &inbound(info("status@broadcast", "6281299999999@s.whatsapp.net", "3A05"), text)).expect("handed over");
        assert_eq!(post.content.chat, shared::message::STATUS_BROADCAST, "the inbox knows it for a status post");
        let group = info("120363000000000002@g.us", "6281299999999:7@s.whatsapp.net", "3A06");
        assert_eq!(receipt_address(&group.source), (jid("120363000000000002@g.us"), Some(jid("6281299999999@s.whatsapp.net"))));
        let direct = info("6281299999999@s.whatsapp.net", "6281299999999:7@s.whatsapp.net", "3A07");
        assert_eq!(receipt_address(&direct.source), (jid("6281299999999@s.whatsapp.net"), None));
    }

    #[test]
    fn send_failures_are_classed_as_the_library_means_them() {
        use whatsapp_rust::{ClientError, IqError};
        let server = |code| SendError::Iq(IqError::ServerError { code, text: "refused".into(), error_type: None, backoff: None });
        assert!(matches!(send_failure(&SendError::Client(ClientError::NotConnected), true), SendFailure::NotConnected(_)));
        assert!(matches!(send_failure(&server(403), false), SendFailure::NotConnected(_)), "the socket went meanwhile");
        assert!(matches!(send_failure(&SendError::Iq(IqError::NotConnected), true), SendFailure::NotConnected(_)));
        assert!(matches!(send_failure(&server(403), true), SendFailure::Rejected(_)), "no longer a member of the group");
        assert!(matches!(send_failure(&server(404), true), SendFailure::Rejected(_)));
        assert!(matches!(send_failure(&SendError::InvalidRequest("a newsletter".into()), true), SendFailure::Rejected(_)));
        for transient in [server(406), server(408), server(429), server(500), SendError::Iq(IqError::Timeout), SendError::NotLoggedIn] {
            assert!(matches!(send_failure(&transient, true), SendFailure::Failed(_)), "{transient}");
        }
        let encryption = SendError::Internal(whatsapp_rust::anyhow::anyhow!("encryption failed for all 1 recipient device(s)"));
        assert!(matches!(send_failure(&encryption, true), SendFailure::Failed(_)));
    }

    #[tokio::test]
    async fn a_session_store_is_open_in_one_client_at_a_time() {
        let dir = std::env::temp_dir().join(format!("store-lock-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(STORE_FILE).to_string_lossy().into_owned();
        let first = SqliteStore::with_config(&path, store_config(Duration::from_millis(200))).await.expect("the first client opens it");
        assert!(store_is_free(&path).is_err(), "a second client cannot open a store another holds, and knows at once");
        drop(first);
        SqliteStore::with_config(&path, store_config(Duration::from_millis(200))).await.expect("once the first let go, the next one opens it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn network_filesystems_are_told_from_local_ones() {
        assert_eq!(network_filesystem(0x6969), Some("NFS"));
        assert_eq!(network_filesystem(0xFF53_4D42), Some("CIFS"));
        assert_eq!(network_filesystem(0xEF53), None, "ext4");
        assert_eq!(network_filesystem(0x0102_1994), None, "tmpfs");
        check_data_dir(&std::env::temp_dir()).expect("a local directory is fine");
    }
}
