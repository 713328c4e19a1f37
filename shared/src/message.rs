//! Messages: what a client asks a session to send, checked field by field, and the Message the
//! API shows for it.
//!
//! A message is stored as a Redis hash (see [`crate::outbox`]): its content, written once when
//! the API accepts it (`doc`), and its progress (`status`, the time of each step, `error`),
//! which the daemon advances. The content never changes, so no script ever re-encodes it.

use crate::ApiError;
use crate::validate::{json_object, only_known_fields};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// WhatsApp Cloud API's limit on a text body, in characters.
pub const TEXT_MAX_CHARS: usize = 4_096;
/// Mentions per message.
pub const MENTIONS_MAX: usize = 50;
/// Names and addresses of a location.
pub const PLACE_MAX_CHARS: usize = 256;
/// The longest `Idempotency-Key` accepted.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The contents a message may carry, exactly one per message.
const CONTENTS: &[&str] = &["text", "image", "video", "audio", "document", "sticker", "location", "reaction"];
/// The contents that carry a file.
pub const MEDIA_KINDS: &[&str] = &["image", "video", "audio", "document", "sticker"];
/// WhatsApp's limit on a caption, in characters.
pub const CAPTION_MAX_CHARS: usize = 1_024;
/// A document's file name, in characters.
pub const FILE_NAME_MAX_CHARS: usize = 255;
/// The longest media URL accepted.
pub const MEDIA_URL_MAX: usize = 2_048;
/// The longest reaction: one emoji, however many code points it joins.
pub const EMOJI_MAX_CHARS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sent,
    /// An inbound message, stored by the gateway.
    Received,
    Delivered,
    Read,
    Played,
    Failed,
}

const STATUSES: [MessageStatus; 7] = [
    MessageStatus::Queued,
    MessageStatus::Sent,
    MessageStatus::Received,
    MessageStatus::Delivered,
    MessageStatus::Read,
    MessageStatus::Played,
    MessageStatus::Failed,
];

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sent => "sent",
            MessageStatus::Received => "received",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Played => "played",
            MessageStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        STATUSES.into_iter().find(|m| m.as_str() == s)
    }

    /// How far a message got: a late receipt (`delivered` after `read`) never moves it back.
    /// `failed` ends a message that was never acknowledged by WhatsApp. An inbound message
    /// starts `received`, level with `delivered`: it is on the session's side.
    pub fn rank(self) -> u8 {
        match self {
            MessageStatus::Queued => 0,
            MessageStatus::Sent => 1,
            MessageStatus::Received | MessageStatus::Delivered => 2,
            MessageStatus::Read => 3,
            MessageStatus::Played => 4,
            MessageStatus::Failed => 5,
        }
    }

    /// The hash field (and API field) holding when the message reached this status.
    pub fn time_field(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queuedAt",
            MessageStatus::Sent => "sentAt",
            MessageStatus::Received => "receivedAt",
            MessageStatus::Delivered => "deliveredAt",
            MessageStatus::Read => "readAt",
            MessageStatus::Played => "playedAt",
            MessageStatus::Failed => "failedAt",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "outbound" => Some(Direction::Outbound),
            "inbound" => Some(Direction::Inbound),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    pub name: Option<String>,
    pub address: Option<String>,
}

/// The message a reply quotes, as WhatsApp names it, with what it said: a reply carries a copy
/// of what it quotes, which is what the recipient's phone shows above it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quote {
    pub wa_message_id: String,
    /// Who wrote the quoted message (its JID).
    pub participant: Option<String>,
    /// The chat the quoted message is in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
    /// Its type (`text`, `image`, …), when known.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its text, or its file's caption, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A reaction to a message: `emoji` empty when the reaction was taken back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reaction {
    /// WhatsApp's id of the message reacted to.
    pub wa_message_id: String,
    /// Our id of that message, when the gateway has it.
    pub message_id: Option<String>,
    /// Who wrote the message reacted to (its JID), when known.
    #[serde(default)]
    pub participant: Option<String>,
    pub emoji: String,
}

/// What a message's media is: for a received one, what WhatsApp said of it; for a sent one,
/// what the client gave. The bytes themselves are fetched with `GET …/messages/{id}/media`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    /// Where the gateway fetched a sent file from, when the client gave a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub mime_type: Option<String>,
    pub caption: Option<String>,
    pub file_name: Option<String>,
    /// Bytes, when WhatsApp tells.
    pub size: Option<u64>,
    /// An audio message recorded as a voice note.
    #[serde(default)]
    pub voice_note: bool,
}

/// Who wrote an inbound message, in each of WhatsApp's addressings it gave: the phone-number
/// JID, the LID (WhatsApp's privacy-preserving id), and the name they chose.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sender {
    pub phone_jid: Option<String>,
    pub lid: Option<String>,
    pub push_name: Option<String>,
}

/// What a message says, between whom: fixed once stored (the hash field `doc`). In a group,
/// `chat` is the group and `from` the member who wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    pub id: String,
    pub session_id: String,
    pub direction: Direction,
    pub chat: String,
    pub from: Option<String>,
    pub to: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// Our id of the message this one replies to, when the gateway has it.
    pub reply_to: Option<String>,
    /// The message this one replies to, as WhatsApp names it.
    #[serde(default)]
    pub quoted: Option<Quote>,
    #[serde(default)]
    pub mentions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Sender>,
    pub created_at: i64,
    /// A message still queued at this time (Unix ms) fails as `expired` instead of going out late.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

impl Content {
    /// A received message's content, its contents still to fill in: a fresh id, written now.
    pub fn inbound(session_id: &str, chat: &str, from: &str, to: Option<&str>, kind: &str) -> Content {
        Content {
            id: ulid::Ulid::new().to_string(),
            session_id: session_id.to_owned(),
            direction: Direction::Inbound,
            chat: chat.to_owned(),
            from: Some(from.to_owned()),
            to: to.map(str::to_owned),
            kind: kind.to_owned(),
            text: None,
            location: None,
            reaction: None,
            media: None,
            reply_to: None,
            quoted: None,
            mentions: Vec::new(),
            sender: None,
            created_at: crate::time::now_millis(),
            expires_at: None,
        }
    }
}

/// The chat a contact's status posts arrive in: they are no chat messages.
pub const STATUS_BROADCAST: &str = "status@broadcast";

/// The type of a received message the session could not decrypt (until it is recovered).
pub const UNDECRYPTABLE: &str = "undecryptable";

/// The hash fields (and API fields) holding when a received message was edited, or deleted for
/// everyone.
pub const EDITED_AT: &str = "editedAt";
pub const REVOKED_AT: &str = "revokedAt";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageError {
    pub code: String,
    pub message: String,
}

/// Where a message got, and when (the hash's fields beside `doc`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub status: MessageStatus,
    pub error: Option<MessageError>,
    /// WhatsApp's id: an outbound message's is chosen when it is accepted, so a resend after a
    /// crash reuses it, and shown once sent.
    pub wa_message_id: Option<String>,
    pub queued_at: Option<i64>,
    pub sent_at: Option<i64>,
    pub received_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub read_at: Option<i64>,
    pub played_at: Option<i64>,
    pub failed_at: Option<i64>,
    /// When its author edited it (a received message).
    pub edited_at: Option<i64>,
    /// When it was deleted for everyone (a received message).
    pub revoked_at: Option<i64>,
    pub updated_at: i64,
}

/// A message as the API shows it: its content and its progress, side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    #[serde(flatten)]
    pub content: Content,
    #[serde(flatten)]
    pub progress: Progress,
}

impl Message {
    /// A message just stored, as the API shows it, without reading it back: its content `doc`,
    /// WhatsApp id and first status, reached `now`.
    pub fn stored(doc: &str, wa_id: &str, status: MessageStatus, now: i64) -> Result<Message, ApiError> {
        let fields = [
            ("doc", doc.to_owned()),
            ("waId", wa_id.to_owned()),
            ("status", status.as_str().to_owned()),
            (status.time_field(), now.to_string()),
            ("updatedAt", now.to_string()),
        ];
        Message::from_fields(&fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// Assembles the API's view from the stored hash's fields.
    pub fn from_fields(fields: &std::collections::HashMap<String, String>) -> Result<Message, ApiError> {
        let unreadable = |what: &str| ApiError::internal(format!("stored message is unreadable: {what}"));
        let content: Content = serde_json::from_str(fields.get("doc").ok_or_else(|| unreadable("no content"))?)
            .map_err(|e| unreadable(&e.to_string()))?;
        let status = fields.get("status").and_then(|s| MessageStatus::parse(s)).ok_or_else(|| unreadable("status"))?;
        let time = |status: MessageStatus| fields.get(status.time_field()).and_then(|t| t.parse::<i64>().ok());
        let sent_at = time(MessageStatus::Sent);
        let shown = sent_at.is_some() || content.direction == Direction::Inbound;
        let progress = Progress {
            status,
            error: fields.get("error").and_then(|e| serde_json::from_str(e).ok()),
            wa_message_id: fields.get("waId").filter(|_| shown).cloned(),
            queued_at: time(MessageStatus::Queued),
            sent_at,
            received_at: time(MessageStatus::Received),
            delivered_at: time(MessageStatus::Delivered),
            read_at: time(MessageStatus::Read),
            played_at: time(MessageStatus::Played),
            failed_at: time(MessageStatus::Failed),
            edited_at: fields.get(EDITED_AT).and_then(|t| t.parse().ok()),
            revoked_at: fields.get(REVOKED_AT).and_then(|t| t.parse().ok()),
            updated_at: fields.get("updatedAt").and_then(|t| t.parse().ok()).unwrap_or(content.created_at),
        };
        Ok(Message { content, progress })
    }
}

/// A checked `POST …/messages` body.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    /// The recipient's JID (a phone number becomes `<digits>@s.whatsapp.net`).
    pub to: String,
    pub kind: &'static str,
    pub text: Option<String>,
    pub location: Option<Location>,
    /// `(message id, emoji)`: a reaction to a message of this session.
    pub reaction: Option<(String, String)>,
    /// A file to send, with what is said of it.
    pub media: Option<(Media, MediaSource)>,
    /// The id of a message of this session the new one replies to.
    pub reply_to: Option<String>,
    pub mentions: Vec<String>,
}

/// Where a sent file's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaSource {
    /// Fetched by the daemon when the message goes out (its `Media::url`).
    Url,
    /// Given inline (base64 in the request), kept with the message until it goes out.
    Data(Vec<u8>),
}

/// Checks a send request: the recipient, exactly one content, and the options, each error
/// naming its field. Inline media is decoded here and refused past `media_max_bytes`.
pub fn send_request(body: &[u8], media_max_bytes: usize) -> Result<SendRequest, ApiError> {
    let body = json_object(body)?;
    let mut known = vec!["to", "replyTo", "mentions"];
    known.extend_from_slice(CONTENTS);
    only_known_fields(&body, &known)?;
    let to = recipient(body.get("to"))?;
    let given: Vec<&str> = CONTENTS.iter().copied().filter(|c| body.get(*c).is_some_and(|v| !v.is_null())).collect();
    let kind = match given.as_slice() {
        [] => return Err(ApiError::invalid_field("text", format!("a message needs exactly one content: one of {}", CONTENTS.join(", ")))),
        [one] => *one,
        [first, second, ..] => {
            return Err(ApiError::invalid_field(second, format!("a message carries one content only; {first} is given too")));
        }
    };
    let text = if kind == "text" { Some(text(&body["text"])?) } else { None };
    let location = if kind == "location" { Some(location(&body["location"])?) } else { None };
    let reaction = if kind == "reaction" { Some(reaction(&body["reaction"])?) } else { None };
    let media = if MEDIA_KINDS.contains(&kind) { Some(media(&body[kind], kind, media_max_bytes)?) } else { None };
    let reply_to = match body.get("replyTo") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if crate::validate::is_safe_id(id) => Some(id.clone()),
        Some(_) => return Err(ApiError::invalid_field("replyTo", "must be the id of a message of this session")),
    };
    let mentions = match body.get("mentions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MENTIONS_MAX => items
            .iter()
            .map(|item| person(item).ok_or_else(|| ApiError::invalid_field("mentions", "each must be a phone number in international format or a user's JID")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid_field("mentions", format!("must be a list of at most {MENTIONS_MAX} phone numbers or JIDs"))),
    };
    Ok(SendRequest { to, kind, text, location, reaction, media, reply_to, mentions })
}

/// The recipient as a JID: digits in international format (an optional `+`), or a JID of a
/// user (`…@s.whatsapp.net`, `…@lid`) or a group (`…@g.us`).
fn recipient(value: Option<&Value>) -> Result<String, ApiError> {
    let bad = || ApiError::invalid_field("to", "must be a phone number in international format (digits), or a JID ending in @s.whatsapp.net, @lid or @g.us");
    let Some(Value::String(to)) = value else {
        return Err(if value.is_none_or(Value::is_null) { ApiError::invalid_field("to", "is required") } else { bad() });
    };
    chat_jid(to).ok_or_else(bad)
}

/// A chat as a client names it (a phone number, a user JID or a group JID), as a JID.
pub fn chat_jid(s: &str) -> Option<String> {
    person(&Value::String(s.to_owned())).or_else(|| group(s))
}

/// A user: a phone number or a user JID.
fn person(value: &Value) -> Option<String> {
    let s = value.as_str()?.trim();
    let digits = |s: &str, range: std::ops::RangeInclusive<usize>| range.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((user, server)) = s.split_once('@') {
        return match server {
            "s.whatsapp.net" if digits(user, 7..=15) => Some(s.to_owned()),
            "lid" if digits(user, 5..=20) => Some(s.to_owned()),
            _ => None,
        };
    }
    let number = s.strip_prefix('+').unwrap_or(s);
    digits(number, 7..=15).then(|| format!("{number}@s.whatsapp.net"))
}

/// A group JID: `<digits>@g.us`, or the older `<digits>-<digits>@g.us`.
fn group(s: &str) -> Option<String> {
    let user = s.trim().strip_suffix("@g.us")?;
    let ok = !user.is_empty() && user.len() <= 40 && user.split('-').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| format!("{user}@g.us"))
}

fn text(value: &Value) -> Result<String, ApiError> {
    match value.as_str() {
        Some(text) if text.trim().is_empty() => Err(ApiError::invalid_field("text", "must not be empty")),
        Some(text) if text.chars().count() > TEXT_MAX_CHARS => {
            Err(ApiError::invalid_field("text", format!("must be at most {TEXT_MAX_CHARS} characters")))
        }
        Some(text) => Ok(text.to_owned()),
        None => Err(ApiError::invalid_field("text", "must be a string")),
    }
}

fn location(value: &Value) -> Result<Location, ApiError> {
    let fields = object_of(value, "location", &["latitude", "longitude", "name", "address"])?;
    let coordinate = |field: &str, bound: f64| -> Result<f64, ApiError> {
        fields
            .get(field)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && v.abs() <= bound)
            .ok_or_else(|| ApiError::invalid_field(&format!("location.{field}"), format!("must be a number from -{bound} to {bound}")))
    };
    Ok(Location {
        latitude: coordinate("latitude", 90.0)?,
        longitude: coordinate("longitude", 180.0)?,
        name: place(fields, "name")?,
        address: place(fields, "address")?,
    })
}

fn reaction(value: &Value) -> Result<(String, String), ApiError> {
    let fields = object_of(value, "reaction", &["messageId", "emoji"])?;
    let message_id = match fields.get("messageId") {
        Some(Value::String(id)) if crate::validate::is_safe_id(id) => id.clone(),
        _ => return Err(ApiError::invalid_field("reaction.messageId", "must be the id of a message of this session")),
    };
    let emoji = match fields.get("emoji") {
        Some(Value::String(emoji)) if emoji.chars().count() <= EMOJI_MAX_CHARS && emoji.trim() == emoji => emoji.clone(),
        _ => return Err(ApiError::invalid_field("reaction.emoji", format!("must be an emoji (at most {EMOJI_MAX_CHARS} characters), or empty to take the reaction back"))),
    };
    Ok((message_id, emoji))
}

/// A file to send (`kind` is its content field): a URL or base64 `data` (at most `max_bytes`
/// decoded), a MIME type that fits the kind, and what the kind may carry besides.
fn media(value: &Value, kind: &str, max_bytes: usize) -> Result<(Media, MediaSource), ApiError> {
    let fields = object_of(value, kind, &["url", "data", "mimeType", "caption", "fileName", "voiceNote"])?;
    let invalid = |name: &str, why: String| ApiError::invalid_field(&format!("{kind}.{name}"), why);
    let given = |name: &str| fields.get(name).filter(|v| !v.is_null());
    let (url, source) = match (given("url"), given("data")) {
        (Some(_), Some(_)) => return Err(invalid("data", "give either url or data, not both".into())),
        (None, None) => return Err(invalid("url", "a file is required: url (http or https) or data (base64)".into())),
        (Some(url), None) => (Some(media_url(url).ok_or_else(|| invalid("url", format!("must be an http or https URL of at most {MEDIA_URL_MAX} characters, without credentials")))?), MediaSource::Url),
        (None, Some(data)) => (None, MediaSource::Data(media_data(data, max_bytes).map_err(|why| invalid("data", why))?)),
    };
    let mime_type = given("mimeType").and_then(Value::as_str).filter(|m| mime_fits(m, kind)).ok_or_else(|| {
        let expected = match kind {
            "sticker" => "image/webp".to_owned(),
            "document" => "a MIME type (type/subtype)".to_owned(),
            _ => format!("a {kind}/* MIME type"),
        };
        invalid("mimeType", format!("is required, and must be {expected}"))
    })?;
    let caption = match given("caption") {
        None => None,
        Some(_) if matches!(kind, "audio" | "sticker") => return Err(invalid("caption", format!("{kind} messages carry no caption"))),
        Some(Value::String(c)) if !c.trim().is_empty() && c.chars().count() <= CAPTION_MAX_CHARS => Some(c.clone()),
        Some(_) => return Err(invalid("caption", format!("must be 1 to {CAPTION_MAX_CHARS} characters"))),
    };
    let file_name = match given("fileName") {
        None => None,
        Some(Value::String(n)) if !n.trim().is_empty() && n.chars().count() <= FILE_NAME_MAX_CHARS && !n.chars().any(|c| c.is_control() || c == '/' || c == '\\') => Some(n.clone()),
        Some(_) => return Err(invalid("fileName", format!("must be a file name of 1 to {FILE_NAME_MAX_CHARS} characters, without / or \\"))),
    };
    let voice_note = match given("voiceNote") {
        None => false,
        Some(Value::Bool(v)) if kind == "audio" => *v,
        Some(_) if kind != "audio" => return Err(invalid("voiceNote", "only audio can be a voice note".into())),
        Some(_) => return Err(invalid("voiceNote", "must be true or false".into())),
    };
    let size = match &source {
        MediaSource::Data(bytes) => Some(bytes.len() as u64),
        MediaSource::Url => None,
    };
    Ok((Media { url, mime_type: Some(mime_type.to_owned()), caption, file_name, size, voice_note }, source))
}

/// An absolute http(s) URL with a host, no whitespace, no credentials (the URL is shown to
/// every reader of the message), at most [`MEDIA_URL_MAX`] characters.
fn media_url(value: &Value) -> Option<String> {
    let url = value.as_str()?;
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split(['/', '?', '#']).next()?;
    let ok = url.len() <= MEDIA_URL_MAX && !host.is_empty() && !host.starts_with(':') && !host.contains('@') && url.chars().all(|c| c.is_ascii_graphic());
    ok.then(|| url.to_owned())
}

/// Base64 (standard alphabet, padding optional) of 1 to `max_bytes` bytes.
fn media_data(value: &Value, max_bytes: usize) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let Some(data) = value.as_str() else { return Err("must be base64 text".into()) };
    let too_large = || format!("the file is larger than {max_bytes} bytes");
    if data.len() / 4 * 3 > max_bytes + 2 {
        return Err(too_large());
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(data).map_err(|_| "must be base64 (standard alphabet)".to_owned())?;
    match bytes.len() {
        0 => Err("must not be empty".into()),
        n if n > max_bytes => Err(too_large()),
        _ => Ok(bytes),
    }
}

/// The `Content-Type` a file is served with: its MIME type when it is a well-formed one.
pub fn content_type(mime: Option<&str>) -> String {
    mime.filter(|m| mime_fits(m, "document") && m.bytes().all(|b| (b' '..=b'~').contains(&b))).unwrap_or("application/octet-stream").to_owned()
}

/// A MIME type (`type/subtype`, optional parameters) that a `kind` of message can carry: printable
/// ASCII only, since it is served back as the file's `Content-Type`.
fn mime_fits(mime: &str, kind: &str) -> bool {
    if !mime.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return false;
    }
    let essence = mime.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    let Some((top, sub)) = essence.split_once('/') else { return false };
    if mime.len() > 127 || !token(top) || !token(sub) {
        return false;
    }
    match kind {
        "sticker" => essence.eq_ignore_ascii_case("image/webp"),
        "document" => true,
        _ => top.eq_ignore_ascii_case(kind),
    }
}

/// A content's object (`field`), with only the `known` fields, each error naming `field.<name>`.
fn object_of<'a>(value: &'a Value, field: &str, known: &[&str]) -> Result<&'a Map<String, Value>, ApiError> {
    let Value::Object(fields) = value else { return Err(ApiError::invalid_field(field, "must be an object")) };
    only_known_fields(fields, known)
        .map_err(|e| ApiError::invalid_field(&format!("{field}.{}", e.details["field"].as_str().unwrap_or("")), "unknown field"))?;
    Ok(fields)
}

fn place(fields: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= PLACE_MAX_CHARS => Ok(Some(s.trim().to_owned())),
        Some(_) => Err(ApiError::invalid_field(&format!("location.{field}"), format!("must be 1 to {PLACE_MAX_CHARS} characters"))),
    }
}

/// An `Idempotency-Key` header's value: 1 to 255 visible ASCII characters.
pub fn idempotency_key(value: Option<&[u8]>) -> Result<Option<String>, ApiError> {
    let Some(raw) = value else { return Ok(None) };
    match std::str::from_utf8(raw) {
        Ok(key) if !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_MAX && key.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(key.to_owned())),
        _ => Err(ApiError::invalid_field("Idempotency-Key", format!("must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"))),
    }
}

/// WhatsApp's shape of a message id: `3EB0` and 18 uppercase hex digits, here from a ULID's
/// randomness, so ids chosen by the gateway look like those of WhatsApp Web.
pub fn new_wa_message_id() -> String {
    let random = ulid::Ulid::new().random();
    format!("3EB0{:018X}", random & ((1u128 << 72) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<SendRequest, ApiError> {
        send_request(body.as_bytes(), 16)
    }

    #[test]
    fn recipients_become_jids() {
        assert_eq!(check(r#"{"to": "+628123456789", "text": "hi"}"#).unwrap().to, "628123456789@s.whatsapp.net");
        assert_eq!(check(r#"{"to": "628123456789@s.whatsapp.net", "text": "hi"}"#).unwrap().to, "628123456789@s.whatsapp.net");
        assert_eq!(check(r#"{"to": "205227043110953@lid", "text": "hi"}"#).unwrap().to, "205227043110953@lid");
        assert_eq!(check(r#"{"to": "120363025246125888@g.us", "text": "hi"}"#).unwrap().to, "120363025246125888@g.us");
        for bad in [r#""abc""#, r#""12""#, r#""12@x.com""#, "5", r#""@g.us""#, r#""1-@g.us""#] {
            let e = check(&format!(r#"{{"to": {bad}, "text": "hi"}}"#)).unwrap_err();
            assert_eq!(e.details["field"], "to", "{bad}");
        }
        assert_eq!(check(r#"{"text": "hi"}"#).unwrap_err().details["field"], "to");
    }

    #[test]
    fn exactly_one_content() {
        let to = r#""628123456789""#;
        assert_eq!(check(&format!(r#"{{"to": {to}}}"#)).unwrap_err().details["field"], "text");
        let two = check(&format!(r#"{{"to": {to}, "text": "a", "location": {{"latitude": 1, "longitude": 2}}}}"#)).unwrap_err();
        assert_eq!(two.details["field"], "location");
        assert_eq!(check(&format!(r#"{{"to": {to}, "text": "  "}}"#)).unwrap_err().details["field"], "text");
        let long = "x".repeat(TEXT_MAX_CHARS + 1);
        assert_eq!(check(&format!(r#"{{"to": {to}, "text": "{long}"}}"#)).unwrap_err().details["field"], "text");
        assert_eq!(check(&format!(r#"{{"to": {to}, "text": "a", "colour": 1}}"#)).unwrap_err().details["field"], "colour");
        let reaction = check(&format!(r#"{{"to": {to}, "reaction": {{"messageId": "01K", "emoji": "🙏"}}}}"#)).unwrap();
        assert_eq!(reaction.reaction, Some(("01K".to_owned(), "🙏".to_owned())));
        let removal = check(&format!(r#"{{"to": {to}, "reaction": {{"messageId": "01K", "emoji": ""}}}}"#)).unwrap();
        assert_eq!(removal.reaction.unwrap().1, "");
        for (bad, field) in [(r#"{"emoji": "x"}"#, "reaction.messageId"), (r#"{"messageId": "01K", "emoji": 5}"#, "reaction.emoji"),
            (r#"{"messageId": "01K", "emoji": "way too long for one emoji"}"#, "reaction.emoji"), (r#"{"messageId": "01K", "emoji": "", "x": 1}"#, "reaction.x")] {
            assert_eq!(check(&format!(r#"{{"to": {to}, "reaction": {bad}}}"#)).unwrap_err().details["field"], field, "{bad}");
        }
    }

    #[test]
    fn media_is_checked_field_by_field() {
        let to = r#""628123456789""#;
        let by_url = check(&format!(r#"{{"to": {to}, "image": {{"url": "https://cdn.example.com/a.jpg?x=1", "mimeType": "image/jpeg", "caption": "hi"}}}}"#)).unwrap();
        let (media, source) = by_url.media.unwrap();
        assert_eq!((by_url.kind, media.url.as_deref(), media.caption.as_deref(), source), ("image", Some("https://cdn.example.com/a.jpg?x=1"), Some("hi"), MediaSource::Url));
        let inline = check(&format!(r#"{{"to": {to}, "audio": {{"data": "AAEC", "mimeType": "audio/ogg; codecs=opus", "voiceNote": true}}}}"#)).unwrap();
        let (media, source) = inline.media.unwrap();
        assert_eq!((media.size, media.voice_note, source), (Some(3), true, MediaSource::Data(vec![0, 1, 2])));
        let document = check(&format!(r#"{{"to": {to}, "document": {{"data": "AAE", "mimeType": "application/pdf", "fileName": "q3.pdf"}}}}"#)).unwrap();
        assert_eq!(document.media.unwrap().0.file_name.as_deref(), Some("q3.pdf"));
        for (content, field) in [
            (r#""image": {"mimeType": "image/png"}"#, "image.url"),
            (r#""image": {"url": "https://x/a", "data": "AA==", "mimeType": "image/png"}"#, "image.data"),
            (r#""image": {"url": "ftp://x/a", "mimeType": "image/png"}"#, "image.url"),
            (r#""image": {"url": "https://", "mimeType": "image/png"}"#, "image.url"),
            (r#""image": {"url": "https://x/a b", "mimeType": "image/png"}"#, "image.url"),
            (r#""image": {"url": "https://user:secret@x/a", "mimeType": "image/png"}"#, "image.url"),
            (r#""image": {"data": "not base64!", "mimeType": "image/png"}"#, "image.data"),
            (r#""image": {"data": "", "mimeType": "image/png"}"#, "image.data"),
            (r#""image": {"data": "AAECAwQFBgcICQoLDA0ODxAREhM=", "mimeType": "image/png"}"#, "image.data"),
            (r#""image": {"url": "https://x/a", "mimeType": "video/mp4"}"#, "image.mimeType"),
            (r#""image": {"url": "https://x/a"}"#, "image.mimeType"),
            (r#""document": {"url": "https://x/a", "mimeType": "text/plain;\r\nx-injected: 1"}"#, "document.mimeType"),
            (r#""sticker": {"url": "https://x/a", "mimeType": "image/png"}"#, "sticker.mimeType"),
            (r#""sticker": {"url": "https://x/a", "mimeType": "image/webp", "caption": "x"}"#, "sticker.caption"),
            (r#""video": {"url": "https://x/a", "mimeType": "video/mp4", "voiceNote": true}"#, "video.voiceNote"),
            (r#""document": {"url": "https://x/a", "mimeType": "application/pdf", "fileName": "../etc/passwd"}"#, "document.fileName"),
            (r#""document": {"url": "https://x/a", "mimeType": "application/pdf", "size": 3}"#, "document.size"),
            (r#""video": "https://x/a""#, "video"),
        ] {
            let e = check(&format!(r#"{{"to": {to}, {content}}}"#)).unwrap_err();
            assert_eq!((e.status(), &e.details["field"]), (400, &Value::from(field)), "{content}");
        }
    }

    #[test]
    fn locations_are_bounded() {
        let to = r#""628123456789""#;
        let ok = check(&format!(r#"{{"to": {to}, "location": {{"latitude": -6.2, "longitude": 106.8, "name": "Monas"}}}}"#)).unwrap();
        assert_eq!(ok.location.unwrap().name.as_deref(), Some("Monas"));
        let far = check(&format!(r#"{{"to": {to}, "location": {{"latitude": 91, "longitude": 0}}}}"#)).unwrap_err();
        assert_eq!(far.details["field"], "location.latitude");
        let odd = check(&format!(r#"{{"to": {to}, "location": {{"latitude": 1, "longitude": 0, "alt": 3}}}}"#)).unwrap_err();
        assert_eq!(odd.details["field"], "location.alt");
    }

    #[test]
    fn mentions_and_keys() {
        let ok = check(r#"{"to": "628123456789", "text": "hi @628111", "mentions": ["628111111111"]}"#).unwrap();
        assert_eq!(ok.mentions, vec!["628111111111@s.whatsapp.net"]);
        assert_eq!(check(r#"{"to": "628123456789", "text": "x", "mentions": ["x"]}"#).unwrap_err().details["field"], "mentions");
        assert_eq!(idempotency_key(Some(b"order-17")).unwrap().as_deref(), Some("order-17"));
        assert!(idempotency_key(Some(b"has space")).is_err() && idempotency_key(Some(b"")).is_err());
        let id = new_wa_message_id();
        assert!(id.starts_with("3EB0") && id.len() == 22 && id != new_wa_message_id(), "{id}");
    }
}
