//! The real backend: WhatsApp Web multi-device through `whatsapp-rust`, one client per session,
//! each with its own SQLite store under the session's data directory.
//!
//! The library's own reconnect is switched off: the supervisor owns reconnects, so that every
//! drop is reported, backed off and counted the same way for every backend. Events are taken
//! on the library's dispatch path (a raw handler), which keeps them in order and never drops one.
//!
//! Received messages go through the library's inbound durability hook: WhatsApp's server is
//! acknowledged only once the session's inbox stored them, and redelivers them otherwise.

use crate::backend::{Backend, BackendEvent, Client, Events, Identity, Inbox, SendFailure, receipts_by_chat};
use crate::config::Config;
use async_trait::async_trait;
use shared::directory::{Contact, Group, Participant, Role};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use shared::inbox::Incoming;
use shared::media::{FetchError, MediaRef};
use std::io::{Cursor, Seek, SeekFrom, Write};
use whatsapp_rust::ErrorChainExt;
use whatsapp_rust::download::{DownloadWriter, Downloadable, MediaType};
use whatsapp_rust::media::{self as wa_media, AudioOptions, DocumentOptions, ImageOptions, VideoOptions};
use whatsapp_rust::upload::{UploadOptions, UploadResponse};
use shared::message::{Content, Location, Media, MessageStatus, Quote, Reaction, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::InboundDurabilityHook;
use whatsapp_rust::prelude::{Bot, Event, EventHandler, InboundMessage, Jid, MessageExt, SendError, SendOptions};
use whatsapp_rust::types::presence::ReceiptType;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::store::SqliteStore;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::ConnectFailureReason;
use whatsapp_rust::wacore::iq::devices::RemoveCompanionDeviceSpec;
use std::path::Path;

const STORE_FILE: &str = "whatsapp.db";

pub struct WhatsApp {
    config: Config,
}

impl WhatsApp {
    pub fn new(config: Config) -> WhatsApp {
        WhatsApp { config }
    }
}

#[async_trait]
impl Backend for WhatsApp {
    async fn connect(&self, session_id: &str, dir: &Path, events: Events, inbox: Arc<dyn Inbox>) -> Result<Arc<dyn Client>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(STORE_FILE);
        let store = SqliteStore::new(&path.to_string_lossy()).await.map_err(|e| format!("cannot open the session store: {e}"))?;
        let forwarder = Forwarder { events: events.clone(), client: OnceLock::new() };
        let forwarder = Arc::new(forwarder);
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
        let closing = Arc::new(AtomicBool::new(false));
        let handle = bot.spawn();
        // The run loop can end without an event (a socket that never opened): report it, unless
        // the end was asked for.
        let watch = closing.clone();
        tokio::spawn(async move {
            handle.await;
            if !watch.load(Ordering::SeqCst) {
                let _ = events.send(BackendEvent::Disconnected { reason: "the connection to WhatsApp ended".into() });
            }
        });
        Ok(Arc::new(WaClient { client, closing }))
    }
}

struct WaClient {
    client: Arc<whatsapp_rust::Client>,
    closing: Arc<AtomicBool>,
}

#[async_trait]
impl Client for WaClient {
    async fn pair_with_code(&self, phone: &str) -> Result<String, String> {
        let options = PairCodeOptions { phone_number: phone.to_owned(), ..PairCodeOptions::default() };
        self.client.pair_with_code(options).await.map_err(|e| e.to_string())
    }

    async fn logout(&self) -> Result<(), String> {
        self.closing.store(true, Ordering::SeqCst);
        // `Client::logout` does not say whether WhatsApp took the unlink: the IQ is sent here,
        // and only an answer counts.
        let unlinked = match self.client.pn() {
            Some(pn) => self.client.execute(RemoveCompanionDeviceSpec::new(&pn)).await.map_err(|e| format!("WhatsApp did not take the unlink: {e}")),
            None => Err("the client has no paired identity".to_owned()),
        };
        self.client.disconnect().await;
        unlinked
    }

    async fn send(&self, wa_id: &str, message: &Content, file: Option<&[u8]>) -> Result<Option<MediaRef>, SendFailure> {
        let to: Jid = message.chat.parse().map_err(|e| SendFailure::Rejected(format!("the recipient {} is not a JID: {e}", message.chat)))?;
        let options = SendOptions::default().with_message_id(wa_id.to_owned());
        let me = [self.client.pn(), self.client.lid()].into_iter().flatten().map(|jid| jid.to_non_ad_string()).collect::<Vec<_>>();
        let (proto, reference) = match (&message.media, file) {
            (Some(media), Some(file)) => {
                let kind = media_type(&message.kind).ok_or_else(|| SendFailure::Rejected(format!("{} is no media kind", message.kind)))?;
                let upload = self.client.upload(file.to_vec(), kind, UploadOptions::default()).await.map_err(|e| {
                    let chain: &(dyn std::error::Error + 'static) = e.as_ref();
                    match chain.http_status() {
                        _ if !self.client.is_connected() => SendFailure::NotConnected(format!("the file could not be uploaded: {e}")),
                        Some(status @ 400..500) if status != 408 && status != 429 => {
                            SendFailure::Rejected(format!("WhatsApp's media servers refused the file ({status})"))
                        }
                        _ => SendFailure::UploadFailed(format!("the file could not be uploaded: {e}")),
                    }
                })?;
                let reference = reference_of(&message.kind, &upload);
                (media_message(message, media, upload), Some(reference))
            }
            (Some(_), None) => return Err(SendFailure::Rejected("a media message needs its file".into())),
            (None, _) => (wa_message(message, &me)?, None),
        };
        match self.client.send_message_with_options(to, proto, options).await {
            Ok(_) => Ok(reference),
            Err(SendError::InvalidRequest(reason)) => Err(SendFailure::Rejected(reason)),
            Err(e) => Err(SendFailure::NotConnected(e.to_string())),
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
        self.closing.store(true, Ordering::SeqCst);
        self.client.disconnect().await;
    }
}

/// The quote and mentions of an outgoing message, if it has either.
fn context_info(message: &Content) -> Option<wa::ContextInfo> {
    (message.quoted.is_some() || !message.mentions.is_empty()).then(|| wa::ContextInfo {
        stanza_id: message.quoted.as_ref().map(|q| q.wa_message_id.clone()),
        participant: message.quoted.as_ref().and_then(|q| q.participant.clone()),
        mentioned_jid: message.mentions.clone(),
        ..Default::default()
    })
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

/// The protocol message for an uploaded file, with the caption, file name, voice-note flag,
/// quote and mentions the message carries.
fn media_message(message: &Content, media: &Media, upload: UploadResponse) -> wa::Message {
    let context = context_info(message).map(Box::new);
    let mimetype = media.mime_type.clone();
    match message.kind.as_str() {
        "image" => wa_media::image_message(upload, ImageOptions { caption: media.caption.clone(), mimetype, context_info: context, ..Default::default() }),
        "video" => wa_media::video_message(upload, VideoOptions { caption: media.caption.clone(), mimetype, context_info: context, ..Default::default() }),
        "audio" => wa_media::audio_message(upload, AudioOptions { mimetype, ptt: Some(media.voice_note), context_info: context, ..Default::default() }),
        "sticker" => wa::Message {
            sticker_message: MessageField::some(wa::message::StickerMessage {
                url: Some(upload.url),
                direct_path: Some(upload.direct_path),
                media_key: Some(upload.media_key.to_vec()),
                file_sha256: Some(upload.file_sha256.to_vec()),
                file_enc_sha256: Some(upload.file_enc_sha256.to_vec()),
                file_length: Some(upload.file_length),
                media_key_timestamp: Some(upload.media_key_timestamp),
                mimetype,
                context_info: context.map_or_else(MessageField::none, |c| MessageField::some(*c)),
                ..Default::default()
            }),
            ..Default::default()
        },
        _ => wa_media::document_message(upload, DocumentOptions {
            mimetype,
            file_name: media.file_name.clone(),
            title: media.file_name.clone(),
            caption: media.caption.clone(),
            context_info: context,
            ..Default::default()
        }),
    }
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
        if stored.auto_read {
            // Not awaited here: the hook runs inside the receive pipeline, under the senders' locks.
            let read = kept.iter().map(|(incoming, m)| {
                let source = &m.info.source;
                let ours = (incoming.content.chat.clone(), incoming.content.from.clone().unwrap_or_default());
                ((source.chat.clone(), source.is_group.then(|| source.sender.clone()), ours), m.info.id.clone())
            });
            tokio::spawn(mark_read(client, self.inbox.clone(), receipts_by_chat(read)));
        }
        Ok(())
    }
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

/// A received message as the gateway keeps it; `None` for what is no message to show: the
/// number's own messages from its other devices, and protocol messages (revokes, edits, key
/// shares, history-sync notices).
fn incoming(session_id: &str, me: Option<&str>, inbound: &InboundMessage) -> Option<Incoming> {
    let (info, base) = (&inbound.info, inbound.message.get_base_message());
    let source = &info.source;
    if source.is_from_me || base.protocol_message.is_set() {
        return None;
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
        content.quoted = context.stanza_id.clone().map(|wa_message_id| Quote { wa_message_id, participant: context.participant.clone() });
        content.mentions = context.mentioned_jid.clone();
    }
    Some(Incoming { content, wa_id: info.id.clone(), media_ref })
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

/// Maps library events onto [`BackendEvent`]s as they are dispatched.
struct Forwarder {
    events: Events,
    client: OnceLock<Weak<whatsapp_rust::Client>>,
}

impl Forwarder {
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
        if let Some(mapped) = map_event(&event, || self.0.identity()) {
            let _ = self.0.events.send(mapped);
        }
    }
}

fn identity(pn: &Jid, lid: Option<&Jid>, push_name: Option<String>) -> Identity {
    Identity {
        jid: pn.to_non_ad_string(),
        lid: lid.map(Jid::to_non_ad_string),
        phone: Some(pn.user.to_string()),
        push_name,
    }
}

/// The library's events that matter to a session's status, and what each one means for it.
fn map_event(event: &Event, identity_now: impl FnOnce() -> Option<Identity>) -> Option<BackendEvent> {
    Some(match event {
        Event::PairingQrCode(qr) => BackendEvent::Qr { code: qr.code.clone(), valid_for: qr.timeout },
        Event::PairingQrCodesExhausted(_) => BackendEvent::QrExhausted,
        Event::PairSuccess(paired) => BackendEvent::Paired(identity(&paired.id, Some(&paired.lid), None)),
        Event::PairError(failed) => BackendEvent::Disconnected { reason: format!("pairing failed: {}", failed.error) },
        Event::Connected(_) => match identity_now() {
            Some(identity) => BackendEvent::Connected(identity),
            None => BackendEvent::Disconnected { reason: "connected without a paired identity".into() },
        },
        Event::Disconnected(gone) => BackendEvent::Disconnected { reason: gone.reason.to_string() },
        Event::LoggedOut(out) => BackendEvent::LoggedOut { reason: failure_reason(&out.reason) },
        Event::StreamReplaced(_) => BackendEvent::StreamReplaced,
        Event::TemporaryBan(ban) => BackendEvent::TemporaryBan { reason: ban.code.to_string(), lifts_in: ban.expire.to_std().ok() },
        Event::ConnectFailure(failure) if failure.reason.is_logged_out() => {
            BackendEvent::LoggedOut { reason: failure_reason(&failure.reason) }
        }
        Event::ConnectFailure(failure) if failure.reason == ConnectFailureReason::TempBanned => {
            BackendEvent::TemporaryBan { reason: failure.message.clone().unwrap_or_else(|| "temporarily banned".into()), lifts_in: None }
        }
        Event::ConnectFailure(failure) => BackendEvent::Disconnected {
            reason: format!("connect failure {}: {}", failure_reason(&failure.reason), failure.message.as_deref().unwrap_or("")),
        },
        Event::StreamError(error) => BackendEvent::Disconnected { reason: format!("stream error {}", error.code) },
        Event::ClientOutdated(_) => BackendEvent::Disconnected { reason: "WhatsApp refused this client version as outdated".into() },
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
            let status = match receipt.r#type {
                ReceiptType::Delivered => MessageStatus::Delivered,
                ReceiptType::Read => MessageStatus::Read,
                ReceiptType::Played => MessageStatus::Played,
                _ => return None,
            };
            BackendEvent::Receipt { ids: receipt.message_ids.iter().map(|id| id.to_string()).collect(), status }
        }
        Event::PushNameUpdate(update) => {
            BackendEvent::Contacts(vec![Contact { push_name: Some(update.new_push_name.clone()), ..contact(&update.jid) }])
        }
        _ => return None,
    })
}

fn failure_reason(reason: &ConnectFailureReason) -> String {
    format!("{reason:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use whatsapp_rust::types::events::{
        Connected, ConnectFailure, ContactUpdate, Disconnected, LoggedOut, PairSuccess, PairingQrCode,
        PairingQrCodesExhausted, StreamReplaced, TempBanReason, TemporaryBan,
    };

    fn jid(text: &str) -> Jid {
        text.parse().unwrap()
    }

    fn me() -> Option<Identity> {
        Some(identity(&jid("6281234567890@s.whatsapp.net"), Some(&jid("205227043110953@lid")), Some("Support".into())))
    }

    #[test]
    fn pairing_events_map_to_qr_codes_and_identity() {
        let qr = Event::PairingQrCode(PairingQrCode::builder().code("2@ref,a,b,c".into()).timeout(Duration::from_secs(60)).build());
        assert_eq!(map_event(&qr, me), Some(BackendEvent::Qr { code: "2@ref,a,b,c".into(), valid_for: Duration::from_secs(60) }));
        let exhausted = Event::PairingQrCodesExhausted(PairingQrCodesExhausted::builder().disconnected(true).build());
        assert_eq!(map_event(&exhausted, me), Some(BackendEvent::QrExhausted));
        let paired = Event::PairSuccess(
            PairSuccess::builder()
                .id(jid("6281234567890:12@s.whatsapp.net"))
                .lid(jid("205227043110953:12@lid"))
                .business_name(String::new())
                .platform("android".into())
                .build(),
        );
        let Some(BackendEvent::Paired(identity)) = map_event(&paired, me) else { panic!("not a pairing") };
        assert_eq!(identity.jid, "6281234567890@s.whatsapp.net");
        assert_eq!(identity.lid.as_deref(), Some("205227043110953@lid"));
        assert_eq!(identity.phone.as_deref(), Some("6281234567890"));
    }

    #[test]
    fn connection_events_map_to_status_changes() {
        let connected = Event::Connected(Connected::builder().build());
        assert_eq!(map_event(&connected, me), Some(BackendEvent::Connected(me().unwrap())));
        assert!(matches!(map_event(&connected, || None), Some(BackendEvent::Disconnected { .. })));
        let dropped = Event::Disconnected(Disconnected::builder().reason(whatsapp_rust::wacore::net::DisconnectReason::StreamEnded).build());
        assert!(matches!(map_event(&dropped, me), Some(BackendEvent::Disconnected { .. })));
        let out = Event::LoggedOut(LoggedOut::builder().on_connect(true).reason(ConnectFailureReason::LoggedOut).build());
        assert!(matches!(map_event(&out, me), Some(BackendEvent::LoggedOut { .. })));
        let replaced = Event::StreamReplaced(StreamReplaced::builder().build());
        assert_eq!(map_event(&replaced, me), Some(BackendEvent::StreamReplaced));
        let ban = Event::TemporaryBan(TemporaryBan::builder().code(TempBanReason::SentToTooManyPeople).expire(whatsapp_rust::chrono::TimeDelta::hours(1)).build());
        let Some(BackendEvent::TemporaryBan { lifts_in, .. }) = map_event(&ban, me) else { panic!("not a ban") };
        assert_eq!(lifts_in, Some(Duration::from_secs(3600)));
        let locked = Event::ConnectFailure(ConnectFailure::builder().reason(ConnectFailureReason::AccountLocked).build());
        assert!(matches!(map_event(&locked, me), Some(BackendEvent::LoggedOut { .. })));
        let busy = Event::ConnectFailure(ConnectFailure::builder().reason(ConnectFailureReason::ServiceUnavailable).build());
        assert!(matches!(map_event(&busy, me), Some(BackendEvent::Disconnected { .. })));
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
        let Some(BackendEvent::Contacts(contacts)) = map_event(&Event::ContactUpdate(update), me) else { panic!("not contacts") };
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0].jid, "205227043110999@lid");
        assert_eq!(contacts[0].name.as_deref(), Some("Budi Santoso"));
        assert_eq!(contacts[0].phone_number.as_deref(), Some("6281299999999"), "the phone number behind a LID");
        assert_eq!(contacts[0].push_name, None, "a contact update says nothing of the push name");
    }
}
