//! The simulated phones: what they send (a [`PhoneMessage`] from a control entry), their address
//! books and groups, and the formats WhatsApp gives codes in. No I/O here.

use base64::Engine;
use serde::{Deserialize, Serialize};
use shared::directory::{Contact, Group, Participant, Role};
use shared::inbox::{Change, Incoming};
use shared::message::{Content, Location, Media, Quote, Reaction, Sender};
use std::collections::HashMap;

/// What a simulated phone sends, from the control entry's fields: `to` and `from` (phone
/// numbers), `id` (WhatsApp's id, random when absent), `type` (`text` by default, `location`,
/// `reaction`, `image`, `video`, `audio`, `document`, `sticker`, or anything else for a kind the
/// gateway does not read), `text`, `latitude`/`longitude`/`name`/`address`, `emoji`, `target`
/// and `target_from` (the WhatsApp id reacted to, and its author), `quote` and `quote_from` (a reply), `mentions`
/// (comma-separated phones), `mime`/`caption`/`file_name`/`size`/`voice_note` (media) and
/// `data` (the file, base64: uploaded to the simulated media servers first), `group`
/// (a group JID: the message is written there), `addressing` (`lid` when WhatsApp addresses the
/// sender by LID, giving the phone number beside it; else the phone number, with the LID).
///
/// As WhatsApp sends them too: `status` (`true`: a status post, in `status@broadcast`);
/// `type` `edit` (the author edits their message `target` to `text`) or `revoke` (deletes
/// `target` for everyone); `undecryptable` (`true`: the session's device cannot decrypt it, and
/// WhatsApp delivers it again, readable, after `recover_ms` when given, with the same id, and
/// addressed as `recover_addressing` says when given: the phone's copy may name the sender by
/// phone number where the first named them by LID).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhoneMessage {
    pub to: String,
    pub from: String,
    pub id: String,
    pub fields: HashMap<String, String>,
}

impl PhoneMessage {
    pub fn parse(fields: &HashMap<String, String>) -> Result<PhoneMessage, String> {
        let phone = |name: &str| {
            fields.get(name).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).cloned().ok_or(format!("{name} must be a phone number"))
        };
        let id = fields.get("id").cloned().unwrap_or_else(|| format!("3A{:018X}", rand::random::<u128>() & ((1u128 << 72) - 1)));
        Ok(PhoneMessage { to: phone("to")?, from: phone("from")?, id, fields: fields.clone() })
    }

    /// Not to be delivered before this (Unix ms): a recovered message waits for its sender.
    pub fn due_at(&self) -> Option<i64> {
        self.fields.get("due_at")?.parse().ok()
    }

    /// After an undecryptable delivery, the readable copy the sender's phone sends again after
    /// `recover_ms` (same id); `None` when it never does, or the message was readable.
    pub fn recovered(&self) -> Option<PhoneMessage> {
        if self.fields.get("undecryptable").map(String::as_str) != Some("true") {
            return None;
        }
        let after: i64 = self.fields.get("recover_ms")?.parse().ok()?;
        let mut again = self.clone();
        again.fields.remove("undecryptable");
        if let Some(addressing) = self.fields.get("recover_addressing").cloned() {
            again.fields.insert("addressing".to_owned(), addressing);
        }
        again.fields.insert("due_at".to_owned(), (shared::time::now_millis() + after).to_string());
        Some(again)
    }

    /// The message as the receiving session's client gets it.
    pub fn incoming(&self, session_id: &str, me: &str) -> Incoming {
        let field = |name: &str| self.fields.get(name).filter(|v| !v.is_empty()).cloned();
        let (phone_jid, lid) = (format!("{}@s.whatsapp.net", self.from), lid_of(&self.from));
        let from = if field("addressing").as_deref() == Some("lid") { lid.clone() } else { phone_jid.clone() };
        let chat = match field("status").as_deref() {
            Some("true") => shared::message::STATUS_BROADCAST.to_owned(),
            _ => field("group").unwrap_or_else(|| from.clone()),
        };
        let kind = field("type").unwrap_or_else(|| "text".to_owned());
        let sender = Sender { phone_jid: Some(phone_jid.clone()), lid: Some(lid.clone()), push_name: Some(field("push_name").unwrap_or(format!("Push {}", self.from))) };
        let change = match kind.as_str() {
            "edit" => Some(Change::Edit { target: field("target").unwrap_or_default(), text: field("text") }),
            "revoke" => Some(Change::Revoke { target: field("target").unwrap_or_default() }),
            _ => None,
        };
        if change.is_some() || field("undecryptable").as_deref() == Some("true") {
            let kind = if change.is_some() { kind.as_str() } else { shared::message::UNDECRYPTABLE };
            let mut content = Content::inbound(session_id, &chat, &from, Some(me), kind);
            content.sender = Some(sender);
            return Incoming { content, wa_id: self.id.clone(), media_ref: None, change };
        }
        let known = ["text", "location", "reaction", "image", "video", "audio", "document", "sticker"];
        let mut content = Content::inbound(session_id, &chat, &from, Some(me), if known.contains(&kind.as_str()) { kind.as_str() } else { "unsupported" });
        content.sender = Some(sender);
        content.text = field("text");
        content.quoted = field("quote").map(|wa_message_id| Quote { wa_message_id, participant: field("quote_from"), text: field("quote_text"), ..Quote::default() });
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
        Incoming::message(content, self.id.clone(), media_ref)
    }
}

/// A simulated phone's LID: fixed per number, as WhatsApp's is.
pub fn lid_of(phone: &str) -> String {
    format!("9{phone}@lid")
}

/// A control entry id (`<ms>-<seq>`) as a number pair, to keep received messages in order.
pub fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

pub fn contact_phone(i: u32) -> String {
    format!("62899{i:07}")
}

/// A simulated phone's address book: `count` contacts, each with a saved name and a push name.
pub fn address_book(count: u32) -> Vec<Contact> {
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
pub fn joined_groups(phone: &str, count: u32, contacts: u32) -> Vec<Group> {
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
pub fn qr_code() -> String {
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode((0..n).map(|_| rand::random::<u8>()).collect::<Vec<_>>());
    format!("2@{},{},{},{}", b64(48), b64(32), b64(32), b64(32))
}

/// WhatsApp's pairing-code alphabet: no 0, O, I or U, so codes read unambiguously.
pub fn pairing_code() -> String {
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
